"""Which CPU the agent runs on: one. Its threads (the round, the NVML worker that time-boxes each read, the
exporter) take turns under Python's GIL anyway, so a second CPU buys nothing; but a thread waking another on a
different CPU costs about twice a wake-up on the same CPU here (bench/README.md), and the time box costs two such
wake-ups every round. Pinned before any thread starts: Linux sets affinity per thread, and new threads inherit it.
"""

from __future__ import annotations

import os

from slurmgpu.errors import InputError


def pin_to_one_cpu(setting: str) -> int | None:
    """Pin this process (its calling thread, and every thread it starts from now on) to one CPU: the highest-numbered
    CPU it may use for "auto" (CPU 0 takes most interrupts; sites that reserve CPUs for system daemons confine the
    agent with systemd's CPUAffinity=, and "auto" stays inside that set), the given CPU for a number, none for "off".
    Returns the CPU, or None when not pinned."""
    if setting == "off":
        return None
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if setting == "auto" else int(setting)
    if cpu not in allowed:
        raise InputError(
            f"[agent] cpu = {setting}: this process may only run on CPUs {','.join(map(str, allowed))}"
        )
    os.sched_setaffinity(0, {cpu})
    return cpu
