"""Slurm nodes as sinfo reports them, and who drained them (pure parsing)."""

from __future__ import annotations

from dataclasses import dataclass

from slurmgpu.errors import SlurmError

AUTO_PREFIX = "slurmgpu: "
MANUAL_PREFIX = "slurmgpu: manual: "


@dataclass(frozen=True)
class SlurmNode:
    name: str
    state: str  # sinfo's long state: idle, mixed, allocated, drained, draining, down, ...
    reason: str
    reason_time: str | None  # ISO 8601 as sinfo prints it
    reason_user: str
    reason_epoch_seconds: float | None = None

    @property
    def drained(self) -> bool:
        return "drain" in self.state

    @property
    def drained_by_slurmgpu(self) -> bool:
        return self.drained and self.reason.startswith(AUTO_PREFIX)

    @property
    def drained_automatically(self) -> bool:
        return self.drained_by_slurmgpu and not self.reason.startswith(MANUAL_PREFIX)


# Reason last: it is free text (anything after the fourth '|').
SINFO_NODE_FORMAT = "%N|%T|%H|%u|%E"


def parse_sinfo_nodes(text: str) -> list[SlurmNode]:
    from datetime import datetime

    nodes: dict[str, SlurmNode] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 4)
        if len(parts) != 5 or not parts[0]:
            raise SlurmError(f"sinfo printed an unexpected node line: {line[:80]!r}")
        name, state, when, user, reason = parts
        when_value = None if when in ("", "Unknown", "None", "n/a") else when
        epoch = None
        if when_value:
            try:
                epoch = datetime.fromisoformat(when_value).timestamp()
            except ValueError:
                raise SlurmError(f"sinfo printed a bad reason time {when!r} for {name}") from None
        nodes[name] = SlurmNode(
            name=name,
            state=state.rstrip("*~#!%$@^-"),
            reason="" if reason == "none" else reason,
            reason_time=when_value,
            reason_user="" if user in ("Unknown", "(null)") else user,
            reason_epoch_seconds=epoch,
        )
    return [nodes[n] for n in sorted(nodes)]


def parse_gres_gpus(gres: str) -> int | None:
    """'gpu:4', 'gpu:h100:8(S:0-1)', 'gpu:2,shard:8' -> GPU count; '(null)' -> None."""
    total = None
    for item in gres.strip().split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] != "gpu" or len(fields) < 2:
            continue
        count = fields[-1]
        if not count.isdigit():
            raise SlurmError(f"unexpected GPU gres {gres!r}")
        total = (total or 0) + int(count)
    return total
