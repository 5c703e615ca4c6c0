"""Per-GPU usage from counters and accounting stats, and the job summary built on it."""

from __future__ import annotations

import json

from slurmgpu.collection.usage import gpu_usage, job_window_stats
from slurmgpu.config import ThresholdsConfig
from slurmgpu.gpu.types import AccountingStat, GpuReading
from slurmgpu.reports.job_summary import summarize
from slurmgpu.reports.render_job import render_json, render_table
from slurmgpu.slurm.commands import SacctJob
from slurmgpu.store.records import Baseline, JobGpuUsage, JobMeta, JobRecord

GIB = 1 << 30


def stat(pid: int, util: int, start: float, seconds: float | None, mem: int = GIB) -> AccountingStat:
    return AccountingStat(pid, util, util // 2, mem, start, seconds, seconds is None)


def test_window_weights_each_process_by_its_overlap() -> None:
    stats = (stat(1, 80, 100.0, 50.0), stat(2, 40, 150.0, 50.0, 2 * GIB), stat(3, 99, 10.0, 5.0))
    mean, top, peak, _ = job_window_stats(stats, 100.0, 200.0)
    assert mean == (80 * 50 + 40 * 50) / 100
    assert top == 80.0 and peak == 2 * GIB  # pid 3 ended before the job began


def test_running_process_counts_until_the_window_end() -> None:
    mean, *_ = job_window_stats((stat(1, 60, 150.0, None),), 100.0, 200.0)
    assert mean == 30.0


def test_no_process_means_idle_not_unknown() -> None:
    assert job_window_stats((), 0.0, 10.0) == (0.0, 0.0, 0, 0.0)


def reading(
    energy: float, uuid: str = "GPU-a", accounting: tuple[AccountingStat, ...] | None = ()
) -> GpuReading:
    return GpuReading(
        index=0,
        timestamp_epoch_seconds=200.0,
        minor=0,
        uuid=uuid,
        name="X",
        memory_total_bytes=80 * GIB,
        energy_joules=energy,
        accounting=accounting,
    )


def baseline(energy: float, uuid: str = "GPU-a") -> Baseline:
    return Baseline(0, uuid, 100.0, energy, 0, 0, 0, None, 0, 0)


def test_energy_is_the_counter_delta() -> None:
    u = gpu_usage("gn1", 0, reading(5000.0), baseline(1000.0))
    assert u.energy_joules == 4000.0 and u.elapsed_seconds == 100.0


def test_counter_reset_or_swapped_board_gives_unknown_energy() -> None:
    assert gpu_usage("gn1", 0, reading(500.0), baseline(1000.0)).energy_joules is None
    assert gpu_usage("gn1", 0, reading(5000.0, uuid="GPU-b"), baseline(1000.0)).energy_joules is None


def test_accounting_off_is_said_in_the_source() -> None:
    u = gpu_usage("gn1", 0, reading(5000.0, accounting=None), baseline(1000.0))
    assert u.source == "none" and u.utilization_mean_pct is None


def row(
    node: str,
    minor: int,
    util: float,
    peak: int,
    energy: float = 3.6e5,
    source: str = "nvml-accounting",
) -> JobGpuUsage:
    return JobGpuUsage(
        node,
        minor,
        f"GPU-{minor}",
        "NVIDIA H100 80GB HBM3",
        80 * GIB,
        0.0,
        3600.0,
        energy,
        util,
        util,
        peak,
        util / 2,
        source,
    )


META = JobMeta("c", 42, "alice", 1001, "ml-team", "gpu", None, None, None, None, 0.0, 3600.0)
SACCT = SacctJob(
    "42",
    42,
    "alice",
    "ml-team",
    "gpu",
    "COMPLETED",
    "2026-11-25T10:00:00",
    "2026-11-25T10:00:00",
    "2026-11-25T11:00:00",
    3600,
    "gn1",
    4,
    "0:0",
    "train",
)


def test_totals_follow_the_definitions() -> None:
    s = summarize(
        JobRecord(META, (row("gn1", 0, 90, 40 * GIB), row("gn1", 1, 30, 40 * GIB))), SACCT, ThresholdsConfig()
    )
    assert s.gpu_hours_allocated == 2.0
    assert s.gpu_hours_used == 0.9 + 0.3
    assert s.gpu_efficiency_pct is not None and abs(s.gpu_efficiency_pct - 60.0) < 1e-9
    assert s.energy_kwh == 0.2 and s.average_power_watts == 200.0
    assert s.hints == ()


def test_idle_gpu_is_named_in_a_hint() -> None:
    s = summarize(
        JobRecord(META, (row("gn1", 0, 90, 40 * GIB), row("gn1", 3, 0.5, 0))), SACCT, ThresholdsConfig()
    )
    assert any("gn1:gpu3" in h and "2 GPUs requested, 1 used" in h for h in s.hints)
    assert not any("gn1:gpu0" in h for h in s.hints)


def test_low_efficiency_and_small_memory_hints() -> None:
    s = summarize(JobRecord(META, (row("gn1", 0, 20, 2 * GIB),)), SACCT, ThresholdsConfig())
    assert any("efficiency 20%" in h for h in s.hints)
    assert any("peak GPU memory 2.0 GiB of 80.0 GiB" in h for h in s.hints)


def test_no_telemetry_is_said_not_hidden() -> None:
    blind = row("gn2", 0, 0, 0)
    blind = JobGpuUsage(*[*blind.__dict__.values()][:8], None, None, None, None, "none")
    s = summarize(JobRecord(META, (blind,)), SACCT, ThresholdsConfig())
    assert s.gpu_efficiency_pct is None
    assert any("accounting mode is off" in h for h in s.hints)


def test_table_and_json_carry_the_same_numbers() -> None:
    s = summarize(
        JobRecord(META, (row("gn1", 0, 90, 40 * GIB), row("gn2", 1, 0, 0))), SACCT, ThresholdsConfig()
    )
    table = render_table(s)
    data = json.loads(render_json(s))
    assert data["gpu_efficiency_pct"] == s.gpu_efficiency_pct == 45.0
    assert "GPU efficiency 45.0%" in table
    assert [g["node"] for g in data["gpus"]] == ["gn1", "gn2"]
    assert "gn2:gpu1" in table and data["nodes"] == ["gn1", "gn2"]
