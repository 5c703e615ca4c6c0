"""Per-job, per-GPU running aggregates kept by the node agent (pure: readings in, aggregate out).

Utilization comes from the driver's own utilization samples (one per 1/6 s, each "percent busy over its period"),
so the time-weighted mean does not depend on the agent's interval. Memory, power, temperature and clock reasons come
from the agent's reading each round, held for the interval that follows it. A bounded time series (at most
MAX_POINTS, halved in resolution whenever it fills) keeps a week-long job small.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from slurmgpu.gpu.types import GpuReading

MAX_POINTS = 360
MAX_SAMPLE_PERIOD_SECONDS = 1.0  # a longer gap between driver samples is a gap, not one long sample
REASON_NAMES = {
    0x1: "gpu_idle",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake",
}


@dataclass(frozen=True)
class Point:
    t_epoch_seconds: float
    utilization_pct: float
    memory_used_bytes: int
    power_watts: float
    weight: int = 1  # how many raw points were averaged into this one


@dataclass(frozen=True)
class JobGpuAggregate:
    job_id: int
    node: str
    minor: int
    start_epoch_seconds: float
    last_epoch_seconds: float
    last_sample_us: int = 0  # newest driver utilization sample already counted
    covered_seconds: float = 0.0  # time covered by utilization samples
    utilization_seconds: float = 0.0  # integral of utilization (pct x s)
    utilization_max_pct: float | None = None
    utilization_min_pct: float | None = None
    memory_peak_bytes: int = 0
    power_seconds: float = 0.0  # integral of power held over each interval (W x s)
    power_covered_seconds: float = 0.0
    power_max_watts: float | None = None
    temperature_max_celsius: int | None = None
    throttle_seconds: tuple[tuple[str, float], ...] = ()
    rounds: int = 0
    series: tuple[Point, ...] = field(default=())

    @property
    def utilization_mean_pct(self) -> float | None:
        return self.utilization_seconds / self.covered_seconds if self.covered_seconds > 0 else None

    @property
    def power_mean_watts(self) -> float | None:
        return self.power_seconds / self.power_covered_seconds if self.power_covered_seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["series"] = [
            [p.t_epoch_seconds, p.utilization_pct, p.memory_used_bytes, p.power_watts, p.weight]
            for p in self.series
        ]
        data["throttle_seconds"] = dict(self.throttle_seconds)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobGpuAggregate:
        data = dict(data)
        data["series"] = tuple(Point(*p) for p in data.get("series", ()))
        data["throttle_seconds"] = tuple(sorted(dict(data.get("throttle_seconds", {})).items()))
        return cls(**data)


def start(job_id: int, node: str, minor: int, start_epoch_seconds: float) -> JobGpuAggregate:
    return JobGpuAggregate(
        job_id,
        node,
        minor,
        start_epoch_seconds,
        start_epoch_seconds,
        last_sample_us=int(start_epoch_seconds * 1e6),
    )


def _downsample(points: tuple[Point, ...]) -> tuple[Point, ...]:
    """Halve the resolution: merge neighbours, weighting by how many raw points each holds."""
    merged = []
    for i in range(0, len(points) - 1, 2):
        a, b = points[i], points[i + 1]
        w = a.weight + b.weight
        merged.append(
            Point(
                b.t_epoch_seconds,
                (a.utilization_pct * a.weight + b.utilization_pct * b.weight) / w,
                max(a.memory_used_bytes, b.memory_used_bytes),
                (a.power_watts * a.weight + b.power_watts * b.weight) / w,
                w,
            )
        )
    if len(points) % 2:
        merged.append(points[-1])
    return tuple(merged)


def update(agg: JobGpuAggregate, reading: GpuReading) -> JobGpuAggregate:
    """Fold one round's reading of this GPU into the job's aggregate."""
    now = reading.timestamp_epoch_seconds
    if now <= agg.last_epoch_seconds and agg.rounds:
        return agg
    util_s, covered, top, low, last_us = (
        agg.utilization_seconds,
        agg.covered_seconds,
        agg.utilization_max_pct,
        agg.utilization_min_pct,
        agg.last_sample_us,
    )
    round_util = []
    for ts_us, pct in reading.utilization_samples or ():
        if ts_us <= last_us:
            continue
        period = min((ts_us - last_us) / 1e6, MAX_SAMPLE_PERIOD_SECONDS)
        util_s += pct * period
        covered += period
        top = pct if top is None else max(top, pct)
        low = pct if low is None else min(low, pct)
        round_util.append(pct)
        last_us = ts_us
    if reading.utilization_samples is None and reading.utilization_pct is not None:
        # no driver samples on this GPU: the instantaneous reading, held over the interval
        held = now - agg.last_epoch_seconds if agg.rounds else 0.0
        util_s += reading.utilization_pct * held
        covered += held
        top = reading.utilization_pct if top is None else max(top, reading.utilization_pct)
        low = reading.utilization_pct if low is None else min(low, reading.utilization_pct)
        round_util.append(reading.utilization_pct)
    dt = now - agg.last_epoch_seconds if agg.rounds else 0.0
    power_s, power_cov, pmax = agg.power_seconds, agg.power_covered_seconds, agg.power_max_watts
    if reading.power_watts is not None:
        power_s += reading.power_watts * dt
        power_cov += dt
        pmax = reading.power_watts if pmax is None else max(pmax, reading.power_watts)
    throttle = dict(agg.throttle_seconds)
    for bit, name in REASON_NAMES.items():
        if (reading.clock_event_reasons or 0) & bit and dt > 0:
            throttle[name] = throttle.get(name, 0.0) + dt
    temp = agg.temperature_max_celsius
    if reading.temperature_celsius is not None:
        temp = reading.temperature_celsius if temp is None else max(temp, reading.temperature_celsius)
    point = Point(
        now,
        sum(round_util) / len(round_util) if round_util else 0.0,
        reading.memory_used_bytes or 0,
        reading.power_watts or 0.0,
    )
    series = (*agg.series, point)
    while len(series) > MAX_POINTS:
        series = _downsample(series)
    return replace(
        agg,
        last_epoch_seconds=now,
        last_sample_us=last_us,
        covered_seconds=covered,
        utilization_seconds=util_s,
        utilization_max_pct=top,
        utilization_min_pct=low,
        memory_peak_bytes=max(agg.memory_peak_bytes, reading.memory_used_bytes or 0),
        power_seconds=power_s,
        power_covered_seconds=power_cov,
        power_max_watts=pmax,
        temperature_max_celsius=temp,
        throttle_seconds=tuple(sorted(throttle.items())),
        rounds=agg.rounds + 1,
        series=series,
    )
