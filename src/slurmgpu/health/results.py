"""Health check results and how they become a drain reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail"]


MAX_REASON_CHARS = 200  # slurmctld keeps the whole reason, but sinfo columns and humans do not


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    detail: str
    minor: int | None = None

    @property
    def where(self) -> str:
        return f"gpu{self.minor}" if self.minor is not None else "node"


def worst_status(results: list[CheckResult]) -> Status:
    """fail if any check failed, else warn if any warned, else ok."""
    statuses = {r.status for r in results}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "fail"]


def drain_reason(failed: list[CheckResult]) -> str:
    """'slurmgpu: <check> gpu<N>: <detail>' for the first failure, with a count of the others."""
    first = failed[0]
    reason = f"slurmgpu: {first.check} {first.where}: {first.detail}"
    if len(failed) > 1:
        reason += f" (+{len(failed) - 1} more)"
    reason = " ".join(reason.split())  # one line, no runs of blanks
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return reason
