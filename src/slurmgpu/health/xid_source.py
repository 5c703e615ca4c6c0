"""XID events from the kernel log, mapped to GPUs, and what has already been acknowledged.

The kernel log keeps every XID since boot, so a check must only act on new ones: a per-node watermark (how many
XID lines were already handled) lives in the state dir. The prolog (and `slurmgpu health --slurm`) advance it when
nothing drain-class is pending; an admin's `slurmgpu resume` advances it (the admin has looked). A log shorter than the watermark
means a reboot (or, in the simulator, a replaced board): the watermark starts over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from slurmgpu.config import Config, safe_filename
from slurmgpu.gpu.types import NodeReading
from slurmgpu.gpu.xid import parse_xid_lines, read_kernel_log, short_bus_id
from slurmgpu.health.checks import XidEvent


def kernel_log_path(config: Config, node: str) -> Path:
    if config.backend == "simulated":
        return config.sim_state_dir() / f"{node}.kmsg"
    return Path("/dev/kmsg")


def all_xids(config: Config, node: str, reading: NodeReading) -> list[XidEvent]:
    """Every XID in the kernel log, in order, with the GPU minor its PCI bus id belongs to."""
    by_bus = {short_bus_id(g.pci_bus_id): g.minor for g in reading.gpus if g.pci_bus_id}
    text = read_kernel_log(kernel_log_path(config, node))
    return [
        XidEvent(code=code, minor=by_bus.get(bus), bus_id=bus, line=line)
        for bus, code, line in parse_xid_lines(text)
    ]


def xid_counts_by_minor(events: list[XidEvent]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for e in events:
        if e.minor is not None:
            counts[e.minor] = counts.get(e.minor, 0) + 1
    return counts


class Watermark:
    """How many of the node's kernel-log XID lines are already handled (flock'ed JSON file, root-only)."""

    def __init__(self, config: Config, node: str) -> None:
        self.path = config.path("state_dir", node) / "health" / f"{safe_filename(node)}.xid.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> tuple[int, str]:
        try:
            data = json.loads(self.path.read_text())
            return int(data.get("handled", 0)), str(data.get("last", ""))
        except (FileNotFoundError, ValueError, AttributeError):
            return 0, ""

    def new(self, events: list[XidEvent]) -> list[XidEvent]:
        """The events after the last handled line. Where that line is no longer at its place, look for it (the
        kernel's ring buffer dropped older lines); where it is gone, the log is not the one we counted (a reboot or a
        replaced board, or a buffer that wrapped past it): everything in it is new."""
        handled, last = self._read()
        if handled == 0:
            return events
        if len(events) >= handled and events[handled - 1].line == last:
            return events[handled:]
        for i in range(len(events) - 1, -1, -1):
            if events[i].line == last:
                return events[i + 1 :]
        return events

    def advance(self, events: list[XidEvent]) -> None:
        with self._locked():
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"handled": len(events), "last": events[-1].line if events else ""}, f)
            os.replace(tmp, self.path)
