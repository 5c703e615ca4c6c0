"""Values the GPU layer hands upward. Units are in the field names; None means "not available"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GpuStatus = Literal["ok", "lost", "unresponsive", "error"]


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU (`nvidia-smi --query-compute-apps=pid,used_memory`)."""

    pid: int
    used_memory_bytes: int | None


@dataclass(frozen=True)
class AccountingStat:
    """NVML per-process accounting (`nvidia-smi --query-accounted-apps`); kept by the driver after exit."""

    pid: int
    gpu_utilization_pct: int | None  # mean over the process lifetime
    memory_utilization_pct: int | None
    max_memory_bytes: int | None
    start_time_epoch_seconds: float
    active_seconds: float | None  # None while the process still runs (NVML reports 0 then)
    is_running: bool

    def window(self, now_epoch_seconds: float) -> tuple[float, float]:
        end = (
            now_epoch_seconds
            if self.active_seconds is None
            else self.start_time_epoch_seconds + self.active_seconds
        )
        return self.start_time_epoch_seconds, end


@dataclass(frozen=True)
class GpuReading:
    """One GPU read once. `status` says whether the reading is usable; failed fields are listed, not raised."""

    index: int  # NVML ordinal: not what Slurm calls the GPU, see `minor`
    timestamp_epoch_seconds: float
    status: GpuStatus = "ok"
    detail: str = ""
    minor: int | None = None  # /dev/nvidiaN: the number Slurm uses in SLURM_JOB_GPUS
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None  # counter since driver load
    temperature_celsius: int | None = None
    sm_clock_mhz: int | None = None
    clock_event_reasons: int | None = None  # bit mask of nvmlClocksEventReason*
    ecc_volatile_corrected: int | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_corrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    retired_pages_single_bit: int | None = None
    retired_pages_double_bit: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    pcie_link_gen: int | None = None
    pcie_link_gen_max: int | None = None
    pcie_link_width: int | None = None
    pcie_link_width_max: int | None = None
    persistence_mode: bool | None = None
    accounting_mode: bool | None = None
    processes: tuple[GpuProcess, ...] | None = None
    accounting: tuple[AccountingStat, ...] | None = None
    # the driver's utilization samples since the asked-for time: (CPU timestamp in microseconds, percent busy over
    # the sample period ending then), as nvmlDeviceGetSamples(NVML_GPU_UTILIZATION_SAMPLES) returns them
    utilization_samples: tuple[tuple[int, int], ...] | None = None
    failed_fields: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        return f"gpu{self.minor}" if self.minor is not None else f"nvml-index{self.index}"


@dataclass(frozen=True)
class NodeReading:
    """All GPUs of a node, read once. `error` is set when the GPU library itself could not be used."""

    gpus: tuple[GpuReading, ...]
    error: str | None = None
    driver_version: str | None = None
    # XIDs drained from the NVML event set with this reading, as (NVML index, code); None when not asked for or
    # the set could not be read
    xid_events: tuple[tuple[int, int], ...] | None = None

    def by_minor(self) -> dict[int, GpuReading]:
        return {g.minor: g for g in self.gpus if g.minor is not None}

    def select(self, minors: tuple[int, ...]) -> tuple[dict[int, GpuReading], tuple[int, ...]]:
        """The readings for Slurm's GPU indices (device minors), and the minors no readable GPU carries."""
        table = self.by_minor()
        found = {m: table[m] for m in minors if m in table}
        return found, tuple(m for m in minors if m not in table)
