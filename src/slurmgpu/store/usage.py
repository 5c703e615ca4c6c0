"""Per-job usage sums: what reports add up (pure; the Python twin of the store's `job_usage` rollup).

A job contributes one `JobUsage` per GPU model it held. Every measure is an additive sum, so any grouping of jobs
(by user, account, partition, GPU model, day) adds up to the same totals. Ratios are taken at the end, from sums:

- GPU-hours allocated = sum of each GPU's window (prolog to epilog) = `gpu_seconds` / 3600
- GPU-hours used = sum of mean utilization x window, over GPUs with known utilization (`used_gpu_seconds`)
- GPU efficiency = used / allocated, over the GPUs whose utilization is known (`util_known_gpu_seconds`)
- idle GPU-hours = windows of GPUs whose mean utilization was under the idle threshold
- memory efficiency = GPU-hour weighted mean of peak / total memory (`memory_fraction_gpu_seconds` over
  `memory_known_gpu_seconds`)
- energy = sum of counter deltas; average power per GPU = energy / `energy_known_gpu_seconds`

The store keeps the same sums in `job_usage`, maintained by triggers (migration 4) with the idle threshold of the
design (5%): `tests/unit/test_reports_store.py` checks that SQL and this module agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from slurmgpu.store.records import JobGpuUsage

ROLLUP_IDLE_PCT = 5.0  # the idle threshold the store's rollup triggers use (design.md's definition)


@dataclass(frozen=True)
class UsageSums:
    """Additive GPU usage measures of one or more jobs. Seconds are GPU-seconds (GPUs x seconds)."""

    gpus: int = 0
    gpu_seconds: float = 0.0
    used_gpu_seconds: float = 0.0
    util_known_gpu_seconds: float = 0.0
    idle_gpu_seconds: float = 0.0
    energy_joules: float = 0.0
    energy_known_gpu_seconds: float = 0.0
    memory_fraction_gpu_seconds: float = 0.0
    memory_known_gpu_seconds: float = 0.0

    def __add__(self, other: UsageSums) -> UsageSums:
        return UsageSums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @staticmethod
    def total(items: Iterable[UsageSums]) -> UsageSums:
        out = UsageSums()
        for item in items:
            out = out + item
        return out

    @property
    def gpu_hours_allocated(self) -> float:
        return self.gpu_seconds / 3600.0

    @property
    def gpu_hours_used(self) -> float:
        return self.used_gpu_seconds / 3600.0

    @property
    def gpu_hours_without_utilization(self) -> float:
        return max(0.0, self.gpu_seconds - self.util_known_gpu_seconds) / 3600.0

    @property
    def gpu_hours_unused(self) -> float:
        """Allocated minus used, over the GPUs whose utilization is known (the waste we can measure)."""
        return max(0.0, self.util_known_gpu_seconds - self.used_gpu_seconds) / 3600.0

    @property
    def idle_gpu_hours(self) -> float:
        return self.idle_gpu_seconds / 3600.0

    @property
    def gpu_efficiency_pct(self) -> float | None:
        if self.util_known_gpu_seconds <= 0:
            return None
        return 100.0 * self.used_gpu_seconds / self.util_known_gpu_seconds

    @property
    def memory_efficiency_pct(self) -> float | None:
        if self.memory_known_gpu_seconds <= 0:
            return None
        return 100.0 * self.memory_fraction_gpu_seconds / self.memory_known_gpu_seconds

    @property
    def energy_kwh(self) -> float:
        return self.energy_joules / 3.6e6

    @property
    def average_power_per_gpu_watts(self) -> float | None:
        if self.energy_known_gpu_seconds <= 0:
            return None
        return self.energy_joules / self.energy_known_gpu_seconds


def gpu_sums(u: JobGpuUsage, idle_pct: float = ROLLUP_IDLE_PCT) -> UsageSums:
    """One GPU's contribution (the same expressions as the rollup trigger's SQL)."""
    window = u.elapsed_seconds
    util = u.utilization_mean_pct
    peak, total = u.memory_peak_bytes, u.memory_total_bytes
    memory_fraction, memory_known = 0.0, 0.0
    if peak is not None and total is not None and total > 0:
        memory_fraction, memory_known = peak / total * window, window
    return UsageSums(
        gpus=1,
        gpu_seconds=window,
        used_gpu_seconds=0.0 if util is None else util / 100.0 * window,
        util_known_gpu_seconds=0.0 if util is None else window,
        idle_gpu_seconds=window if util is not None and util < idle_pct else 0.0,
        energy_joules=u.energy_joules or 0.0,
        energy_known_gpu_seconds=0.0 if u.energy_joules is None else window,
        memory_fraction_gpu_seconds=memory_fraction,
        memory_known_gpu_seconds=memory_known,
    )


@dataclass(frozen=True)
class ModelGroup:
    """The GPUs of one model on one node (or a whole job), summed: what a summarised record keeps."""

    model: str  # "" when unknown
    sums: UsageSums
    first_start_epoch_seconds: float
    last_end_epoch_seconds: float


def model_groups(gpus: Iterable[JobGpuUsage], idle_pct: float = ROLLUP_IDLE_PCT) -> tuple[ModelGroup, ...]:
    """GPU rows summed per model, sorted by model."""
    acc: dict[str, ModelGroup] = {}
    for u in gpus:
        model = u.model or ""
        sums = gpu_sums(u, idle_pct)
        prev = acc.get(model)
        if prev is None:
            acc[model] = ModelGroup(model, sums, u.start_epoch_seconds, u.end_epoch_seconds)
        else:
            acc[model] = ModelGroup(
                model,
                prev.sums + sums,
                min(prev.first_start_epoch_seconds, u.start_epoch_seconds),
                max(prev.last_end_epoch_seconds, u.end_epoch_seconds),
            )
    return tuple(acc[m] for m in sorted(acc))


def merge_groups(groups: Iterable[ModelGroup]) -> tuple[ModelGroup, ...]:
    acc: dict[str, ModelGroup] = {}
    for g in groups:
        prev = acc.get(g.model)
        acc[g.model] = (
            g
            if prev is None
            else ModelGroup(
                g.model,
                prev.sums + g.sums,
                min(prev.first_start_epoch_seconds, g.first_start_epoch_seconds),
                max(prev.last_end_epoch_seconds, g.last_end_epoch_seconds),
            )
        )
    return tuple(acc[m] for m in sorted(acc))


@dataclass(frozen=True)
class JobUsage:
    """One job's usage of one GPU model: a row of the store's `job_usage`, or the same built from Slurm accounting.

    `job_share` is 1 on exactly one row per job (its first model), so summing it counts jobs under any grouping that
    does not split a job. `telemetry` is False for a job Slurm says held GPUs but for which no GPU record exists:
    its GPU-hours allocated count, the rest is unknown (util/energy/memory known seconds are 0).
    """

    cluster: str
    job_id: int
    model: str
    user: str
    account: str
    partition: str
    end_epoch_seconds: float  # when the job ended (the store: when its GPU record was first written)
    job_share: int
    sums: UsageSums
    telemetry: bool = True
    job_display_id: str = ""


def job_usages(
    *,
    cluster: str,
    job_id: int,
    user: str,
    account: str,
    partition: str,
    end_epoch_seconds: float,
    groups: Iterable[ModelGroup],
    job_display_id: str = "",
) -> list[JobUsage]:
    merged = merge_groups(groups)
    return [
        JobUsage(
            cluster=cluster,
            job_id=job_id,
            model=g.model,
            user=user,
            account=account,
            partition=partition,
            end_epoch_seconds=end_epoch_seconds,
            job_share=1 if i == 0 else 0,
            sums=g.sums,
            job_display_id=job_display_id or str(job_id),
        )
        for i, g in enumerate(merged)
    ]
