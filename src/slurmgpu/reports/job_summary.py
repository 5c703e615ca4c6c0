"""A job's GPU efficiency summary with hints (pure: record + Slurm's view in, summary out).

Definitions (design.md): GPU-hours allocated = sum over GPUs of the GPU's hours in the job; GPU-hours used = sum of
mean utilization x hours; efficiency = used / allocated; idle GPU = mean utilization under the idle threshold;
energy = sum of counter deltas; average power = energy / elapsed. The hours are the window our hooks measured
(prolog to epilog on that node), so every figure of one GPU comes from the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slurmgpu.collection.aggregate import JobGpuAggregate
from slurmgpu.config import ThresholdsConfig
from slurmgpu.slurm.commands import SacctJob
from slurmgpu.store.records import JobGpuUsage, JobRecord

JOULES_PER_KWH = 3.6e6
GIB = 1 << 30


@dataclass(frozen=True)
class GpuRow:
    node: str
    minor: int
    uuid: str | None
    model: str | None
    elapsed_seconds: float
    utilization_mean_pct: float | None
    utilization_max_pct: float | None
    memory_peak_bytes: int | None
    memory_total_bytes: int | None
    energy_kwh: float | None
    average_power_watts: float | None
    idle: bool | None
    source: str
    # the node agent's downsampled series: (epoch seconds, utilization pct, memory used bytes, power watts)
    series: tuple[tuple[float, float, int, float], ...] = ()


@dataclass(frozen=True)
class JobSummary:
    job_id: str
    job_id_raw: int
    cluster: str
    name: str | None
    user: str
    account: str
    partition: str
    nodes: tuple[str, ...]
    state: str
    submit: str | None
    start: str | None
    end: str | None
    elapsed_seconds: float
    window_start_epoch_seconds: float | None
    window_end_epoch_seconds: float | None
    gpus: tuple[GpuRow, ...]
    gpus_allocated: int
    gpu_hours_allocated: float
    gpu_hours_used: float | None
    gpu_efficiency_pct: float | None
    energy_kwh: float | None
    average_power_watts: float | None
    hints: tuple[str, ...]
    slurm_error: str | None = None


def _row(u: JobGpuUsage, idle_pct: float, series: tuple[tuple[float, float, int, float], ...] = ()) -> GpuRow:
    elapsed = u.elapsed_seconds
    power = u.energy_joules / elapsed if u.energy_joules is not None and elapsed > 0 else None
    return GpuRow(
        node=u.node,
        minor=u.minor,
        uuid=u.uuid,
        model=u.model,
        elapsed_seconds=elapsed,
        utilization_mean_pct=u.utilization_mean_pct,
        utilization_max_pct=u.utilization_max_pct,
        memory_peak_bytes=u.memory_peak_bytes,
        memory_total_bytes=u.memory_total_bytes,
        energy_kwh=None if u.energy_joules is None else u.energy_joules / JOULES_PER_KWH,
        average_power_watts=power,
        idle=None if u.utilization_mean_pct is None else u.utilization_mean_pct < idle_pct,
        source=u.source,
        series=series,
    )


def summarize(
    record: JobRecord,
    sacct: SacctJob | None,
    thresholds: ThresholdsConfig,
    slurm_error: str | None = None,
    aggregates: Sequence[JobGpuAggregate] = (),
) -> JobSummary:
    meta = record.meta
    series = {
        (a.node, a.minor): tuple(
            (p.t_epoch_seconds, p.utilization_pct, p.memory_used_bytes, p.power_watts) for p in a.series
        )
        for a in aggregates
    }
    rows = tuple(
        _row(u, thresholds.idle_utilization_pct, series.get((u.node, u.minor), ())) for u in record.gpus
    )
    hours = [r.elapsed_seconds / 3600.0 for r in rows]
    allocated = sum(hours)
    known = [
        (r.utilization_mean_pct, h)
        for r, h in zip(rows, hours, strict=True)
        if r.utilization_mean_pct is not None
    ]
    used = sum(util / 100.0 * h for util, h in known) if known else None
    efficiency = None
    if used is not None and allocated > 0 and len(known) == len(rows):
        efficiency = 100.0 * used / allocated
    energies = [r.energy_kwh for r in rows if r.energy_kwh is not None]
    energy = sum(energies) if energies and len(energies) == len(rows) else None
    window_start = min((u.start_epoch_seconds for u in record.gpus), default=None)
    window_end = max((u.end_epoch_seconds for u in record.gpus), default=None)
    window = (window_end - window_start) if window_start is not None and window_end is not None else 0.0
    elapsed = float(sacct.elapsed_seconds) if sacct else window
    power = energy * JOULES_PER_KWH / window if energy is not None and window > 0 else None
    nodes = tuple(sorted({r.node for r in rows}))
    return JobSummary(
        job_id=sacct.job_id if sacct else _display_id(record),
        job_id_raw=meta.job_id,
        cluster=meta.cluster,
        name=sacct.name if sacct else None,
        user=meta.user,
        account=meta.account,
        partition=meta.partition,
        nodes=nodes,
        state=sacct.state if sacct else "unknown",
        submit=sacct.submit if sacct else None,
        start=sacct.start if sacct else None,
        end=sacct.end if sacct else None,
        elapsed_seconds=elapsed,
        window_start_epoch_seconds=window_start,
        window_end_epoch_seconds=window_end,
        gpus=rows,
        gpus_allocated=len(rows),
        gpu_hours_allocated=allocated,
        gpu_hours_used=used,
        gpu_efficiency_pct=efficiency,
        energy_kwh=energy,
        average_power_watts=power,
        hints=tuple(hints(rows, efficiency, thresholds)),
        slurm_error=slurm_error,
    )


def _display_id(record: JobRecord) -> str:
    m = record.meta
    if m.array_job_id is not None and m.array_task_id is not None:
        return f"{m.array_job_id}_{m.array_task_id}"
    if m.het_job_id is not None and m.het_job_offset is not None:
        return f"{m.het_job_id}+{m.het_job_offset}"
    return str(m.job_id)


def hints(rows: tuple[GpuRow, ...], efficiency: float | None, t: ThresholdsConfig) -> list[str]:
    out: list[str] = []
    if not rows:
        return ["no GPU data was recorded for this job (did the prolog and epilog run on its nodes?)"]
    blind = [r for r in rows if r.source == "none"]
    if blind:
        where = ", ".join(sorted({r.node for r in blind}))
        out.append(
            f"no utilization data from {where}: NVML accounting mode is off there "
            "(an admin can enable it with `nvidia-smi -am 1`)"
        )
    idle = [r for r in rows if r.idle]
    if idle:
        names = ", ".join(f"{r.node}:gpu{r.minor}" for r in idle)
        busy = len(rows) - len(idle)
        out.append(
            f"{len(idle)} of {len(rows)} GPUs idle (mean utilization under {t.idle_utilization_pct:g}%): "
            f"{names}. {len(rows)} GPUs requested, {busy} used"
            + (f": request {busy} next time." if busy else ": did the job run on the CPU only?")
        )
    active = [r for r in rows if r.idle is False]
    if efficiency is not None and active and efficiency < t.low_efficiency_pct and not idle:
        out.append(
            f"GPU efficiency {efficiency:.0f}% is low: the GPUs waited most of the time; look at data loading,"
            " CPU work between kernels, or a larger batch size"
        )
    peaks = [
        (r.memory_peak_bytes, r.memory_total_bytes)
        for r in active
        if r.memory_peak_bytes is not None and r.memory_total_bytes
    ]
    if peaks and all(p / total < t.low_memory_fraction for p, total in peaks):
        peak, total = max(peaks)
        out.append(
            f"peak GPU memory {peak / GIB:.1f} GiB of {total / GIB:.1f} GiB "
            f"({100 * peak / total:.0f}%): a GPU with less memory, or a MIG slice, would do"
        )
    return out
