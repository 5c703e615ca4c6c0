"""Reports from usage cells (pure): groups, totals, cost from the rate card, the most wasteful jobs.

Cost of a cell = GPU-hours allocated x rate + energy kWh x energy price, where the rate is the GPU model's (a part of
the GPU name, case-insensitive, the longest match wins), else the partition's, else the default GPU-hour rate.
Cells keep their partition and model, so each is priced exactly, and group costs add up to the total.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from slurmgpu.config import ReportsConfig
from slurmgpu.store.queries import Cell, ReportFilter, TopJob
from slurmgpu.store.usage import UsageSums


@dataclass(frozen=True)
class RateCard:
    currency: str = ""
    gpu_hour_rate: float = 0.0
    partition_rates: tuple[tuple[str, float], ...] = ()
    gpu_model_rates: tuple[tuple[str, float], ...] = ()
    energy_price_per_kwh: float = 0.0

    @classmethod
    def from_config(cls, reports: ReportsConfig) -> RateCard:
        return cls(
            reports.currency,
            reports.gpu_hour_rate,
            reports.partition_rates,
            reports.gpu_model_rates,
            reports.energy_price_per_kwh,
        )

    @property
    def configured(self) -> bool:
        return bool(
            self.gpu_hour_rate
            or self.energy_price_per_kwh
            or any(r for _, r in self.partition_rates)
            or any(r for _, r in self.gpu_model_rates)
        )

    def rate(self, partition: str, model: str) -> float:
        """Price of one GPU-hour on this partition and GPU model."""
        name = model.lower()
        matches = [(len(key), rate) for key, rate in self.gpu_model_rates if key and key.lower() in name]
        if matches:
            return max(matches)[1]
        return dict(self.partition_rates).get(partition, self.gpu_hour_rate)


@dataclass(frozen=True)
class GroupRow:
    key: tuple[str, ...]
    jobs: int
    jobs_without_telemetry: int
    sums: UsageSums
    gpu_cost: float
    energy_cost: float

    @property
    def cost(self) -> float:
        return self.gpu_cost + self.energy_cost


@dataclass(frozen=True)
class Report:
    by: tuple[str, ...]
    filter: ReportFilter
    source: str  # "store" or "slurmdbd"
    source_detail: str  # the store's path, or the Slurm commands used
    groups: tuple[GroupRow, ...]
    total: GroupRow
    top_jobs: tuple[TopJob, ...]
    rates: RateCard
    idle_pct: float
    notes: tuple[str, ...] = ()


@dataclass
class _Acc:
    jobs: int = 0
    blind: int = 0
    sums: UsageSums = field(default_factory=UsageSums)
    gpu_cost: float = 0.0
    energy_cost: float = 0.0


def _price(cell: Cell, rates: RateCard) -> tuple[float, float]:
    return (
        cell.sums.gpu_hours_allocated * rates.rate(cell.partition, cell.model),
        cell.sums.energy_kwh * rates.energy_price_per_kwh,
    )


def group_rows(cells: Iterable[Cell], by: tuple[str, ...], rates: RateCard) -> list[GroupRow]:
    """Cells added up per group key. Jobs are counted once each, except by GPU model: a job that held two models
    counts in both groups."""
    per_model = "gpu-model" in by
    acc: dict[tuple[str, ...], _Acc] = {}
    for cell in cells:
        gpu_cost, energy_cost = _price(cell, rates)
        slot = acc.setdefault(cell.key, _Acc())
        slot.jobs += cell.job_models if per_model else cell.jobs
        slot.blind += cell.jobs_without_telemetry
        slot.sums = slot.sums + cell.sums
        slot.gpu_cost += gpu_cost
        slot.energy_cost += energy_cost
    rows = [GroupRow(key, a.jobs, a.blind, a.sums, a.gpu_cost, a.energy_cost) for key, a in acc.items()]
    if by == ("day",):
        return sorted(rows, key=lambda r: r.key)
    return sorted(rows, key=lambda r: (-r.sums.gpu_seconds, r.key))


def total_row(cells: Iterable[Cell], rates: RateCard) -> GroupRow:
    """Every cell together: jobs counted once each."""
    (row,) = group_rows(
        (
            Cell((), c.partition, c.model, c.jobs, c.job_models, c.jobs_without_telemetry, c.sums)
            for c in cells
        ),
        (),
        rates,
    ) or [GroupRow((), 0, 0, UsageSums(), 0.0, 0.0)]
    return row


def build_report(
    cells: list[Cell],
    top: list[TopJob],
    *,
    by: tuple[str, ...],
    report_filter: ReportFilter,
    source: str,
    source_detail: str,
    rates: RateCard,
    idle_pct: float,
    notes: tuple[str, ...] = (),
) -> Report:
    return Report(
        by=by,
        filter=report_filter,
        source=source,
        source_detail=source_detail,
        groups=tuple(group_rows(cells, by, rates)),
        total=total_row(cells, rates),
        top_jobs=tuple(top),
        rates=rates,
        idle_pct=idle_pct,
        notes=notes,
    )
