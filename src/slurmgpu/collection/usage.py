"""Per-GPU job usage from the epilog's final reading, the prolog's baseline and NVML accounting stats (pure).

Energy is a counter delta, exact whatever happened in between. Utilization and memory come from the accounting
records of the processes that ran on the GPU inside the job window: each process's lifetime utilization weighted by
the part of its life inside the window (GPUs are allocated exclusively, so every such process is the job's).
"""

from __future__ import annotations

from slurmgpu.collection.aggregate import JobGpuAggregate
from slurmgpu.gpu.types import AccountingStat, GpuReading
from slurmgpu.store.records import Baseline, JobGpuUsage


def job_window_stats(
    stats: tuple[AccountingStat, ...],
    start: float,
    end: float,
) -> tuple[float | None, float | None, int | None, float | None]:
    """(mean utilization, max utilization, peak memory bytes, mean memory utilization) over [start, end]."""
    duration = end - start
    if duration <= 0:
        return None, None, None, None
    util_s = 0.0
    mem_util_s = 0.0
    util_max: float | None = None
    peak: int | None = None
    seen = False
    for s in stats:
        lo, hi = s.window(end)
        overlap = min(hi, end) - max(lo, start)
        if overlap <= 0:
            continue
        seen = True
        if s.gpu_utilization_pct is not None:
            util_s += s.gpu_utilization_pct * overlap
            util_max = max(util_max or 0.0, float(s.gpu_utilization_pct))
        if s.memory_utilization_pct is not None:
            mem_util_s += s.memory_utilization_pct * overlap
        if s.max_memory_bytes is not None:
            peak = max(peak or 0, s.max_memory_bytes)
    if not seen:
        return 0.0, 0.0, 0, 0.0  # accounting is on and no process touched the GPU: it was idle
    return min(100.0, util_s / duration), util_max, peak, min(100.0, mem_util_s / duration)


def gpu_usage(
    node: str, minor: int, final: GpuReading, baseline: Baseline | None, agent: JobGpuAggregate | None = None
) -> JobGpuUsage:
    """Energy from the counters; utilization from the agent's aggregate when it watched at least half the job
    (driver samples, any process, accounting mode or not), else from NVML accounting stats."""
    start = baseline.taken_epoch_seconds if baseline else final.timestamp_epoch_seconds
    end = final.timestamp_epoch_seconds
    energy = None
    same_board = baseline is not None and (
        baseline.uuid is None or final.uuid is None or baseline.uuid == final.uuid
    )
    if same_board and baseline and baseline.energy_joules is not None and final.energy_joules is not None:
        # a counter that went backwards means a driver reload: the job's energy is unknown, not negative
        delta = final.energy_joules - baseline.energy_joules
        energy = delta if delta >= 0 else None
    if final.accounting is not None:
        mean, top, peak, mem_util = job_window_stats(final.accounting, start, end)
        source = "nvml-accounting"
    else:
        mean = top = mem_util = None
        peak = None
        source = "none"
    if (
        agent is not None
        and agent.covered_seconds >= 0.5 * max(end - start, 0.0)
        and agent.covered_seconds > 0
    ):
        mean, top = agent.utilization_mean_pct, agent.utilization_max_pct
        peak = max(peak or 0, agent.memory_peak_bytes)
        source = "agent"
    return JobGpuUsage(
        node=node,
        minor=minor,
        uuid=final.uuid,
        model=final.name,
        memory_total_bytes=final.memory_total_bytes,
        start_epoch_seconds=start,
        end_epoch_seconds=end,
        energy_joules=energy,
        utilization_mean_pct=mean,
        utilization_max_pct=top,
        memory_peak_bytes=peak,
        memory_utilization_mean_pct=mem_util,
        source=source,
    )


def baseline_from(reading: GpuReading, xid_count: int | None) -> Baseline:
    assert reading.minor is not None
    retired = None
    if reading.retired_pages_single_bit is not None or reading.retired_pages_double_bit is not None:
        retired = (reading.retired_pages_single_bit or 0) + (reading.retired_pages_double_bit or 0)
    return Baseline(
        minor=reading.minor,
        uuid=reading.uuid,
        taken_epoch_seconds=reading.timestamp_epoch_seconds,
        energy_joules=reading.energy_joules,
        ecc_volatile_uncorrected=reading.ecc_volatile_uncorrected,
        ecc_aggregate_uncorrected=reading.ecc_aggregate_uncorrected,
        ecc_aggregate_corrected=reading.ecc_aggregate_corrected,
        retired_pages=retired,
        remapped_rows_uncorrectable=reading.remapped_rows_uncorrectable,
        xid_count=xid_count,
    )
