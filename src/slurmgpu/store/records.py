"""Rows of the job store as frozen values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Baseline:
    """Counters of one GPU when the job started; the epilog subtracts them."""

    minor: int
    uuid: str | None
    taken_epoch_seconds: float
    energy_joules: float | None
    ecc_volatile_uncorrected: int | None
    ecc_aggregate_uncorrected: int | None
    ecc_aggregate_corrected: int | None
    retired_pages: int | None
    remapped_rows_uncorrectable: int | None
    xid_count: int | None


@dataclass(frozen=True)
class JobGpuUsage:
    """What one GPU of one node did for one job."""

    node: str
    minor: int
    uuid: str | None
    model: str | None
    memory_total_bytes: int | None
    start_epoch_seconds: float
    end_epoch_seconds: float
    energy_joules: float | None
    utilization_mean_pct: float | None
    utilization_max_pct: float | None
    memory_peak_bytes: int | None
    memory_utilization_mean_pct: float | None
    source: str  # where utilization and memory came from: nvml-accounting, none

    @property
    def elapsed_seconds(self) -> float:
        return max(0.0, self.end_epoch_seconds - self.start_epoch_seconds)


@dataclass(frozen=True)
class JobMeta:
    cluster: str
    job_id: int
    user: str
    uid: int | None
    account: str
    partition: str
    array_job_id: int | None
    array_task_id: int | None
    het_job_id: int | None
    het_job_offset: int | None
    first_seen_epoch_seconds: float
    last_update_epoch_seconds: float


@dataclass(frozen=True)
class JobRecord:
    meta: JobMeta
    gpus: tuple[JobGpuUsage, ...]
