"""Capacity: daily GPU-hours allocated against the GPUs Slurm has, the trend, when allocation crosses a threshold,
how long GPU jobs wait, and how many GPUs would keep allocation under the threshold.

Pure computations over Slurm's view (sacct allocations, sinfo GPU counts) and our records (GPU-hours used):
- a job's allocation on a day = its GPUs x the part of [start, end or now] within that day (local time);
- capacity of a day = GPUs configured now x the hours of that day in the window (today only until now);
- the trend is a least-squares line through the allocation % of the complete days; the forecast extends it;
- GPUs needed = the GPU-hours of the busiest day (or the forecast at the horizon, if higher) / (24 h x threshold).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from slurmgpu.errors import SlurmgpuError
from slurmgpu.reports.render_report import table
from slurmgpu.slurm.accounting import AccountingJob, NodeGpus
from slurmgpu.store.mirror_codec import decode, is_ours


@dataclass(frozen=True)
class Day:
    day: str  # YYYY-MM-DD, local time
    hours: float  # hours of the day inside the window
    capacity_gpu_hours: float
    allocated_gpu_hours: float
    used_gpu_hours: float  # from GPU records (jobs with telemetry only)
    recorded_gpu_hours: float  # allocated GPU-hours of the jobs with a GPU record

    @property
    def allocation_pct(self) -> float | None:
        return (
            100.0 * self.allocated_gpu_hours / self.capacity_gpu_hours
            if self.capacity_gpu_hours > 0
            else None
        )

    @property
    def efficiency_pct(self) -> float | None:
        return 100.0 * self.used_gpu_hours / self.recorded_gpu_hours if self.recorded_gpu_hours > 0 else None


@dataclass(frozen=True)
class Wait:
    jobs: int
    median_seconds: float | None
    p90_seconds: float | None
    max_seconds: float | None


@dataclass(frozen=True)
class Capacity:
    gpus_total: int
    gpus_in_service: int
    nodes: int
    days: tuple[Day, ...]
    threshold_pct: float
    horizon_days: int
    trend_pct_per_day: float | None  # None: fewer than two complete days
    efficiency_trend_pct_per_day: float | None
    forecast_pct_at_horizon: float | None
    crossing: str  # "now", a date (YYYY-MM-DD), "not within N days", or "unknown"
    gpus_needed: int | None
    queue_wait: Wait


def _day_start(d: date) -> float:
    return datetime(d.year, d.month, d.day).timestamp()


def days_between(since: float, until: float) -> list[tuple[str, float, float]]:
    """(YYYY-MM-DD, start, end) of the local days covering [since, until), clipped to it."""
    out = []
    d = datetime.fromtimestamp(since).date()
    while True:
        start = max(since, _day_start(d))
        end = min(until, _day_start(d + timedelta(days=1)))
        if start >= until:
            break
        if end > start:
            out.append((d.isoformat(), start, end))
        d += timedelta(days=1)
    return out


def daily(jobs: Iterable[AccountingJob], gpus: int, since: float, until: float, idle_pct: float) -> list[Day]:
    days = days_between(since, until)
    alloc = [0.0] * len(days)
    used = [0.0] * len(days)
    recorded = [0.0] * len(days)
    for job in jobs:
        if not job.alloc_gpus or job.start_epoch_seconds is None:
            continue
        start = job.start_epoch_seconds
        end = job.end_epoch_seconds if job.end_epoch_seconds is not None else until
        if end <= start:
            continue
        efficiency = _record_efficiency(job, idle_pct)
        for i, (_, lo, hi) in enumerate(days):
            overlap = min(end, hi) - max(start, lo)
            if overlap > 0:
                hours = job.alloc_gpus * overlap / 3600.0
                alloc[i] += hours
                if efficiency is not None:
                    recorded[i] += hours
                    used[i] += hours * efficiency
    return [
        Day(name, (hi - lo) / 3600.0, gpus * (hi - lo) / 3600.0, alloc[i], used[i], recorded[i])
        for i, (name, lo, hi) in enumerate(days)
    ]


def _record_efficiency(job: AccountingJob, idle_pct: float) -> float | None:
    """used / allocated from the job's mirrored GPU record (spread evenly over the job's time), if it has one."""
    if not job.final or not is_ours(job.admin_comment):
        return None
    try:
        groups = decode(job.admin_comment).groups(idle_pct)
    except SlurmgpuError:  # a damaged record only means "no telemetry" here
        return None
    known = sum(g.sums.util_known_gpu_seconds for g in groups)
    return sum(g.sums.used_gpu_seconds for g in groups) / known if known > 0 else None


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, slope) of the least-squares line; None for fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    return my - slope * mx, slope


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in 0..1)."""
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def queue_wait(jobs: Iterable[AccountingJob], since: float, until: float) -> Wait:
    waits = sorted(
        max(0.0, j.start_epoch_seconds - j.submit_epoch_seconds)
        for j in jobs
        if j.alloc_gpus
        and j.start_epoch_seconds is not None
        and j.submit_epoch_seconds is not None
        and since <= j.start_epoch_seconds < until
    )
    return Wait(len(waits), percentile(waits, 0.5), percentile(waits, 0.9), waits[-1] if waits else None)


def capacity(
    jobs: list[AccountingJob],
    nodes: list[NodeGpus],
    *,
    since: float,
    until: float,
    threshold_pct: float,
    horizon_days: int,
    idle_pct: float,
) -> Capacity:
    gpus_total = sum(n.gpus for n in nodes)
    days = daily(jobs, gpus_total, since, until, idle_pct)
    complete = [(i, d) for i, d in enumerate(days) if d.hours >= 24.0 - 1.01 and d.allocation_pct is not None]
    line = fit_line([(float(i), d.allocation_pct or 0.0) for i, d in complete])
    eff = fit_line([(float(i), d.efficiency_pct) for i, d in complete if d.efficiency_pct is not None])
    forecast = crossing = None
    if line is not None:
        intercept, slope = line
        today = float(len(days) - 1)
        now_pct = intercept + slope * today
        forecast = intercept + slope * (today + horizon_days)
        if now_pct >= threshold_pct:
            crossing = "now"
        elif slope > 0 and forecast >= threshold_pct:
            ahead = math.ceil((threshold_pct - intercept) / slope - today)
            crossing = (datetime.fromtimestamp(until).date() + timedelta(days=max(ahead, 0))).isoformat()
        else:
            crossing = f"not within {horizon_days} days"
    busiest = max((d.allocated_gpu_hours / d.hours * 24.0 for _, d in complete if d.hours > 0), default=None)
    if busiest is None and days and days[-1].hours > 0:
        busiest = days[-1].allocated_gpu_hours / days[-1].hours * 24.0
    needed_hours = busiest
    if forecast is not None and gpus_total:
        needed_hours = max(needed_hours or 0.0, forecast / 100.0 * gpus_total * 24.0)
    gpus_needed = (
        None if needed_hours is None else math.ceil(needed_hours / (24.0 * threshold_pct / 100.0) - 1e-9)
    )
    return Capacity(
        gpus_total=gpus_total,
        gpus_in_service=sum(n.gpus for n in nodes if n.in_service),
        nodes=len(nodes),
        days=tuple(days),
        threshold_pct=threshold_pct,
        horizon_days=horizon_days,
        trend_pct_per_day=None if line is None else line[1],
        efficiency_trend_pct_per_day=None if eff is None else eff[1],
        forecast_pct_at_horizon=forecast,
        crossing=crossing or f"unknown: {len(complete)} complete day(s) of history, 2 needed",
        gpus_needed=gpus_needed,
        queue_wait=queue_wait(jobs, since, until),
    )


def capacity_dict(c: Capacity) -> dict[str, Any]:
    data = asdict(c)
    data["days"] = [
        {**asdict(d), "allocation_pct": d.allocation_pct, "efficiency_pct": d.efficiency_pct} for d in c.days
    ]
    return data


def render_json(c: Capacity) -> str:
    return json.dumps(capacity_dict(c), indent=2) + "\n"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render_table(c: Capacity) -> str:
    lines = [
        f"GPU capacity: {c.gpus_total} GPUs on {c.nodes} nodes ({c.gpus_in_service} in service), "
        f"threshold {c.threshold_pct:g}% allocated",
        "",
    ]
    lines += table(
        ["DAY", "HOURS", "CAPACITY GPU-H", "ALLOCATED GPU-H", "ALLOCATED", "USED GPU-H", "EFFICIENCY"],
        [
            [
                d.day,
                f"{d.hours:.1f}",
                f"{d.capacity_gpu_hours:,.1f}",
                f"{d.allocated_gpu_hours:,.2f}",
                "-" if d.allocation_pct is None else f"{d.allocation_pct:.1f}%",
                f"{d.used_gpu_hours:,.2f}",
                "-" if d.efficiency_pct is None else f"{d.efficiency_pct:.1f}%",
            ]
            for d in c.days
        ],
        1,
    )
    trend = "-" if c.trend_pct_per_day is None else f"{c.trend_pct_per_day:+.2f} points/day"
    eff_trend = (
        "-" if c.efficiency_trend_pct_per_day is None else f"{c.efficiency_trend_pct_per_day:+.2f} points/day"
    )
    forecast = "-" if c.forecast_pct_at_horizon is None else f"{c.forecast_pct_at_horizon:.1f}%"
    w = c.queue_wait
    lines += [
        "",
        f"Allocation trend: {trend}; in {c.horizon_days} days: {forecast}; crosses {c.threshold_pct:g}%: {c.crossing}",
        f"GPU efficiency trend (jobs with GPU records): {eff_trend}",
        f"GPUs to stay under {c.threshold_pct:g}%: "
        + ("-" if c.gpus_needed is None else f"{c.gpus_needed} (now {c.gpus_total})"),
        f"Queue wait of GPU jobs (submit to start): {w.jobs} jobs, median {_duration(w.median_seconds)}, "
        f"p90 {_duration(w.p90_seconds)}, max {_duration(w.max_seconds)}",
        "",
        "Note: allocation from Slurm accounting (AllocTRES); capacity = today's GPU count for every day; "
        "USED from the GPU records mirrored into AdminComment",
    ]
    return "\n".join(lines) + "\n"
