"""Per-job, per-GPU running aggregates kept by the node agent (pure: readings in, aggregate out).

Utilization comes from the driver's own utilization samples (one per 1/6 s, each "percent busy over its period"),
so the time-weighted mean does not depend on the agent's interval. Memory, power, temperature and clock reasons come
from the agent's reading each round, held for the interval that follows it. A bounded time series (at most
MAX_POINTS, halved in resolution whenever it fills) keeps a week-long job small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from slurmgpu.frozen import build
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
_REASON_MASK = sum(REASON_NAMES)


class Point(NamedTuple):
    """One point of a job GPU's chart. A named tuple rather than a frozen dataclass: the agent makes one per job GPU
    per round and merges them when the series fills, and a tuple is several times cheaper to build."""

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
        # not dataclasses.asdict: it deep-copies every point of the series, and the agent checkpoints every round
        data = self._scalars_json()
        data["series"] = [list(p) for p in self.series]  # [t, utilization, memory, power, weight]
        return data

    def _scalars_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _SCALAR_NAMES}
        data["throttle_seconds"] = dict(self.throttle_seconds)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobGpuAggregate:
        data = dict(data)
        data["series"] = tuple(Point(*p) for p in data.get("series", ()))
        data["throttle_seconds"] = tuple(sorted(dict(data.get("throttle_seconds", {})).items()))
        return cls(**data)


_SCALAR_NAMES = tuple(f.name for f in fields(JobGpuAggregate) if f.name != "series")
_COMPACT = (",", ":")  # json separators without spaces


class CheckpointEncoder:
    """Encodes aggregates as the JSON text of `to_json()`, re-using the text of each series' unchanged prefix.

    The agent checkpoints every aggregate every round, and encoding a full series (hundreds of floats) was most of a
    checkpoint's cost (bench/README.md). A series only grows by appending, until it fills and is downsampled into
    new points; so the text of the points already encoded stays valid while the series still starts with the very
    same point objects (an identity check, which no downsampling or restore can pass by accident). Not thread-safe:
    one encoder per checkpointing thread."""

    def __init__(self) -> None:
        # aggregate key -> (first point, last point encoded, how many, their text without brackets)
        self._done: dict[tuple[int, str, int], tuple[Point, Point, int, str]] = {}

    def encode(self, agg: JobGpuAggregate) -> str:
        series = agg.series
        key = (agg.job_id, agg.node, agg.minor)
        known = self._done.get(key)
        if not series:
            text = ""
        elif (
            known is not None
            and len(series) >= known[2]
            and series[0] is known[0]
            and series[known[2] - 1] is known[1]
        ):
            text = known[3]
            if len(series) > known[2]:
                new = json.dumps([list(p) for p in series[known[2] :]], separators=_COMPACT)[1:-1]
                text = f"{text},{new}"  # a known text is never empty: empty series are not kept
        else:
            text = json.dumps([list(p) for p in series], separators=_COMPACT)[1:-1]
        if series:
            self._done[key] = (series[0], series[-1], len(series), text)
        else:
            self._done.pop(key, None)
        scalars = json.dumps(agg._scalars_json(), separators=_COMPACT)
        return f'{scalars[:-1]},"series":[{text}]}}'

    def forget(self, job_id: int, node: str, minor: int) -> None:
        self._done.pop((job_id, node, minor), None)


def encode_checkpoint(agg: JobGpuAggregate) -> str:
    """The JSON text of one aggregate, as the store keeps it (no cache: for one-off writes such as the epilog's)."""
    return json.dumps(agg.to_json(), separators=_COMPACT)


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
    """Fold one round's reading of this GPU into the job's aggregate. (The agent's hot path: one call per job GPU per
    round, hence the locals.)"""
    now = reading.timestamp_epoch_seconds
    last_epoch = agg.last_epoch_seconds
    if agg.rounds:
        if now <= last_epoch:
            return agg
        dt = now - last_epoch
    else:
        dt = 0.0
    util_s, covered, top, low, last_us = (
        agg.utilization_seconds,
        agg.covered_seconds,
        agg.utilization_max_pct,
        agg.utilization_min_pct,
        agg.last_sample_us,
    )
    util_sum, util_n = 0.0, 0
    samples = reading.utilization_samples
    if samples is None:
        if reading.utilization_pct is not None:
            # no driver samples on this GPU: the instantaneous reading, held over the interval
            pct = reading.utilization_pct
            util_s += pct * dt
            covered += dt
            top = pct if top is None else max(top, pct)
            low = pct if low is None else min(low, pct)
            util_sum, util_n = pct, 1
    else:
        for ts_us, pct in samples:
            if ts_us <= last_us:
                continue
            period = min((ts_us - last_us) / 1e6, MAX_SAMPLE_PERIOD_SECONDS)
            util_s += pct * period
            covered += period
            top = pct if top is None else max(top, pct)
            low = pct if low is None else min(low, pct)
            util_sum += pct
            util_n += 1
            last_us = ts_us
    power_s, power_cov, pmax = agg.power_seconds, agg.power_covered_seconds, agg.power_max_watts
    power = reading.power_watts
    if power is not None:
        power_s += power * dt
        power_cov += dt
        pmax = power if pmax is None else max(pmax, power)
    throttle = agg.throttle_seconds
    reasons = (reading.clock_event_reasons or 0) & _REASON_MASK
    if reasons and dt > 0:
        spent = dict(throttle)
        for bit, name in REASON_NAMES.items():
            if reasons & bit:
                spent[name] = spent.get(name, 0.0) + dt
        throttle = tuple(sorted(spent.items()))
    temp = agg.temperature_max_celsius
    if reading.temperature_celsius is not None:
        temp = reading.temperature_celsius if temp is None else max(temp, reading.temperature_celsius)
    memory = reading.memory_used_bytes or 0
    series = (*agg.series, Point(now, util_sum / util_n if util_n else 0.0, memory, power or 0.0))
    while len(series) > MAX_POINTS:
        series = _downsample(series)
    # built without the generated __init__ (slurmgpu/frozen.py): this runs for every job GPU every round
    return build(
        JobGpuAggregate,
        {
            "job_id": agg.job_id,
            "node": agg.node,
            "minor": agg.minor,
            "start_epoch_seconds": agg.start_epoch_seconds,
            "last_epoch_seconds": now,
            "last_sample_us": last_us,
            "covered_seconds": covered,
            "utilization_seconds": util_s,
            "utilization_max_pct": top,
            "utilization_min_pct": low,
            "memory_peak_bytes": max(agg.memory_peak_bytes, memory),
            "power_seconds": power_s,
            "power_covered_seconds": power_cov,
            "power_max_watts": pmax,
            "temperature_max_celsius": temp,
            "throttle_seconds": throttle,
            "rounds": agg.rounds + 1,
            "series": series,
        },
    )
