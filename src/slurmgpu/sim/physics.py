"""Every simulated reading as a pure function of a GPU's load schedule and the wall clock.

A GPU's load is a list of segments (start, end, utilization, memory, pid), each the life of one simulated compute
process. Utilization at time t is the capped sum of the active segments; power follows utilization; the energy
counter is the exact integral of power since the node was created. Nothing runs in the background, every process
computes the same value for the same instant, and the counter can only grow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from slurmgpu.sim.models import GpuModel


@dataclass(frozen=True)
class Segment:
    start_epoch_seconds: float
    end_epoch_seconds: float  # may lie in the future; a running process's lease
    utilization_pct: float
    memory_bytes: int
    pid: int

    def active_at(self, t: float) -> bool:
        return self.start_epoch_seconds <= t < self.end_epoch_seconds


def utilization_at(segments: Iterable[Segment], t: float) -> float:
    return min(100.0, sum(s.utilization_pct for s in segments if s.active_at(t)))


def memory_at(segments: Iterable[Segment], t: float, total_bytes: int) -> int:
    return min(total_bytes, sum(s.memory_bytes for s in segments if s.active_at(t)))


def _pieces(segments: Sequence[Segment], a: float, b: float) -> list[tuple[float, float, float, int]]:
    """Split [a, b) into pieces of constant load: (start, end, utilization, memory)."""
    if b <= a:
        return []
    relevant = [s for s in segments if s.start_epoch_seconds < b and s.end_epoch_seconds > a]
    cuts = {a, b}
    for s in relevant:
        if a < s.start_epoch_seconds < b:
            cuts.add(s.start_epoch_seconds)
        if a < s.end_epoch_seconds < b:
            cuts.add(s.end_epoch_seconds)
    points = sorted(cuts)
    pieces = []
    for lo, hi in pairwise(points):
        util = min(100.0, sum(s.utilization_pct for s in relevant if s.active_at(lo)))
        mem = sum(s.memory_bytes for s in relevant if s.active_at(lo))
        pieces.append((lo, hi, util, mem))
    return pieces


def energy_joules(model: GpuModel, segments: Sequence[Segment], a: float, b: float) -> float:
    """Exact energy drawn in [a, b)."""
    return sum(model.power_watts(util) * (hi - lo) for lo, hi, util, _ in _pieces(segments, a, b))


def utilization_seconds(segments: Sequence[Segment], a: float, b: float) -> float:
    """Integral of utilization (pct x s) over [a, b); divide by the duration for the time-weighted mean."""
    return sum(util * (hi - lo) for lo, hi, util, _ in _pieces(segments, a, b))


def interval_truth(
    model: GpuModel, segments: Sequence[Segment], a: float, b: float, total_bytes: int
) -> dict[str, float]:
    pieces = _pieces(segments, a, b)
    duration = max(b - a, 0.0)
    util_s = sum(util * (hi - lo) for lo, hi, util, _ in pieces)
    return {
        "elapsed_seconds": duration,
        "energy_joules": sum(model.power_watts(util) * (hi - lo) for lo, hi, util, _ in pieces),
        "utilization_mean_pct": util_s / duration if duration > 0 else 0.0,
        "utilization_max_pct": max((util for *_, util, _m in pieces), default=0.0),
        "memory_peak_bytes": min(total_bytes, max((mem for *_, mem in pieces), default=0)),
    }


def process_utilization_pct(segment: Segment) -> float:
    """What NVML accounting reports as a process's lifetime utilization: its own share of the GPU."""
    return min(100.0, segment.utilization_pct)
