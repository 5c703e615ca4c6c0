"""Slurm job ids as users type them: 123, 123_4 (array task), 123+1 (heterogeneous component)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from slurmgpu.errors import InputError

_JOB_ID = re.compile(r"^(?P<base>[0-9]{1,10})(?:(?P<sep>[_+])(?P<sub>[0-9]{1,10}))?$")


@dataclass(frozen=True)
class JobId:
    base: int
    array_task: int | None = None
    het_offset: int | None = None

    @property
    def is_plain(self) -> bool:
        return self.array_task is None and self.het_offset is None

    def __str__(self) -> str:
        if self.array_task is not None:
            return f"{self.base}_{self.array_task}"
        if self.het_offset is not None:
            return f"{self.base}+{self.het_offset}"
        return str(self.base)


def parse_job_id(text: str) -> JobId:
    m = _JOB_ID.match(text.strip())
    if not m:
        raise InputError(
            f"bad job id {text!r}: expected a number, an array task (123_4) or a het component (123+1)"
        )
    base = int(m["base"])
    if base == 0:
        raise InputError(f"bad job id {text!r}: job ids start at 1")
    if m["sep"] == "_":
        return JobId(base, array_task=int(m["sub"]))
    if m["sep"] == "+":
        return JobId(base, het_offset=int(m["sub"]))
    return JobId(base)
