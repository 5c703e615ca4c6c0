"""What `slurmgpu sim ...` does to a simulated node: declare load, inject and clear faults, report ground truth."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from slurmgpu.errors import InputError
from slurmgpu.sim import physics
from slurmgpu.sim.state import HEALTHY_FAULTS, SimNode
from slurmgpu.sim.xid_text import xid_message

GIB = 1 << 30
LEASE_SECONDS = (
    15.0  # an open-ended load holds the GPU this far ahead and renews; a killed loader frees it by then
)


@dataclass(frozen=True)
class FaultKind:
    name: str
    help: str


FAULT_KINDS = (
    FaultKind("lost", "GPU fell off the bus: every NVML call raises GpuIsLost"),
    FaultKind("unresponsive", "NVML calls on this GPU hang"),
    FaultKind("ecc-uncorrectable", "one more uncorrectable (double-bit) ECC error, volatile and aggregate"),
    FaultKind("ecc-correctable", "--count more correctable ECC errors"),
    FaultKind("xid", "an XID error with --code in the kernel log"),
    FaultKind("retired-page-pending", "a page waits for retirement (models with page retirement: V100)"),
    FaultKind("remap-pending", "a row remapping waits for a GPU reset (A100, H100)"),
    FaultKind("remap-failure", "row remapping failed (A100, H100)"),
    FaultKind("thermal", "hardware thermal slowdown at 94 C"),
    FaultKind("pcie-degraded", "PCIe link trained below its maximum generation and width"),
    FaultKind("persistence-off", "persistence mode disabled"),
)
FAULT_NAMES = tuple(k.name for k in FAULT_KINDS)


def add_load(
    sim: SimNode,
    minors: tuple[int, ...],
    utilization_pct: float,
    memory_bytes: int,
    pid: int,
    start: float,
    end: float,
) -> None:
    """Declare a process on each GPU from `start` to `end` (its lease when open-ended)."""
    if not 0 <= utilization_pct <= 100:
        raise InputError(f"utilization {utilization_pct} is not within 0..100")
    if memory_bytes < 0:
        raise InputError("memory must not be negative")
    if not minors:
        raise InputError("no GPUs to load: set SLURM_JOB_GPUS or CUDA_VISIBLE_DEVICES, or pass --gpus")

    def change(state: dict[str, Any]) -> None:
        total = sim.model(state).memory_total_bytes
        if memory_bytes > total:
            raise InputError(f"{memory_bytes / GIB:.1f} GiB does not fit a {total / GIB:.1f} GiB GPU")
        for minor in minors:
            sim.gpu_by_minor(state, minor)["segments"].append(
                physics.Segment(start, end, float(utilization_pct), int(memory_bytes), pid)
            )

    sim.update(change)


def set_load_end(sim: SimNode, minors: tuple[int, ...], pid: int, start: float, end: float) -> None:
    """Move the end of the process's segments (renew a lease, or stop now). Only the future changes."""
    now = time.time()
    end = max(end, now)

    def change(state: dict[str, Any]) -> None:
        for minor in minors:
            gpu = sim.gpu_by_minor(state, minor)
            gpu["segments"] = [
                physics.Segment(s.start_epoch_seconds, end, s.utilization_pct, s.memory_bytes, s.pid)
                if s.pid == pid and s.start_epoch_seconds == start and s.end_epoch_seconds > now
                else s
                for s in gpu["segments"]
            ]

    sim.update(change)


def inject_fault(sim: SimNode, minor: int, kind: str, *, code: int | None = None, count: int = 1) -> str:
    """Apply a fault; returns a one-line description of what changed."""
    if kind not in FAULT_NAMES:
        raise InputError(f"unknown fault {kind!r} (known: {', '.join(FAULT_NAMES)})")
    if kind == "xid" and code is None:
        raise InputError("fault xid needs --code (for example 79: GPU has fallen off the bus)")
    if count < 1:
        raise InputError("--count must be at least 1")
    kmsg: list[str] = []

    def change(state: dict[str, Any]) -> None:
        model = sim.model(state)
        gpu = sim.gpu_by_minor(state, minor)
        f = gpu["faults"]
        if kind in ("retired-page-pending",) and not model.page_retirement:
            raise InputError(f"{model.key} has no page retirement (it remaps rows): use remap-pending")
        if kind in ("remap-pending", "remap-failure") and not model.row_remapping:
            raise InputError(f"{model.key} has no row remapping (it retires pages): use retired-page-pending")
        if kind == "lost":
            f["lost"] = True
            kmsg.append(xid_message(gpu["pci_bus_id"], 79))
        elif kind == "unresponsive":
            f["unresponsive"] = True
        elif kind == "ecc-uncorrectable":
            f["ecc_volatile_uncorrected"] += count
            f["ecc_aggregate_uncorrected"] += count
            kmsg.append(xid_message(gpu["pci_bus_id"], 48))
        elif kind == "ecc-correctable":
            f["ecc_volatile_corrected"] += count
            f["ecc_aggregate_corrected"] += count
        elif kind == "xid":
            assert code is not None
            f["xids"] = [*f["xids"], [time.time(), code]]
            kmsg.append(xid_message(gpu["pci_bus_id"], code))
        elif kind == "retired-page-pending":
            f["retired_double_bit"] += 1
            f["retired_pending"] = True
        elif kind == "remap-pending":
            f["remap_uncorrectable"] += 1
            f["remap_pending"] = True
        elif kind == "remap-failure":
            f["remap_failure"] = True
        elif kind == "thermal":
            f["thermal"] = True
        elif kind == "pcie-degraded":
            f["pcie_degraded"] = True
        elif kind == "persistence-off":
            f["persistence_off"] = True

    sim.update(change)
    for line in kmsg:
        sim.append_kmsg(line)
    return f"{sim.node} gpu{minor}: {kind}" + (f" {code}" if code is not None else "")


def clear_faults(sim: SimNode, minor: int | None = None) -> int:
    """Make GPUs healthy again (as after replacing the board); returns how many were cleared."""
    cleared = 0

    def change(state: dict[str, Any]) -> None:
        nonlocal cleared
        gpus = state["gpus"] if minor is None else [sim.gpu_by_minor(state, minor)]
        now = time.time()
        for gpu in gpus:
            gpu["faults"] = dict(HEALTHY_FAULTS, xids=[])
            # the repair went through a reset: processes still on the GPU are gone from now on
            gpu["segments"] = [
                physics.Segment(s.start_epoch_seconds, now, s.utilization_pct, s.memory_bytes, s.pid)
                if s.end_epoch_seconds > now
                else s
                for s in gpu["segments"]
            ]
            cleared += 1

    sim.update(change)
    if minor is None and sim.kmsg_path.exists():
        sim.kmsg_path.write_text(
            ""
        )  # a whole node made healthy again went through a reboot: a fresh kernel log
    return cleared


def truth(sim: SimNode, since: float | None, until: float | None, minor: int | None = None) -> dict[str, Any]:
    """Exact energy, time-weighted utilization and peak memory per GPU over [since, until]."""
    state = sim.state()
    model = sim.model(state)
    now = time.time()
    until = now if until is None else until
    gpus = state["gpus"] if minor is None else [sim.gpu_by_minor(state, minor)]
    out = []
    for gpu in gpus:
        start = gpu["horizon_epoch_seconds"] if since is None else since
        folded = gpu.get("folded_before_epoch_seconds")
        if folded is not None and start < folded:
            raise InputError(f"history before {folded:.0f} was folded away; ask for a later --since")
        values = physics.interval_truth(model, gpu["segments"], start, until, model.memory_total_bytes)
        out.append(
            {
                "minor": gpu["minor"],
                "index": state["gpus"].index(gpu),
                "uuid": gpu["uuid"],
                "since_epoch_seconds": start,
                "until_epoch_seconds": until,
                "energy_counter_joules": sim.energy_counter_joules(gpu, until),
                **values,
            }
        )
    return {"node": sim.node, "model": model.key, "gpus": out}
