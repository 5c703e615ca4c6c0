"""The drain decision and the circuit breaker (pure).

A fault on many nodes at once is more often a driver, configuration or slurmgpu problem than many broken GPUs, so
automatic drains are capped: at most `max_fraction` of the cluster's nodes (at least `min_nodes`) drained by
slurmgpu within the window. Past the cap the node is spared: the job runs and a critical event says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from slurmgpu.health.results import CheckResult, drain_reason, failures
from slurmgpu.slurm.nodes import SlurmNode

# held: the node was already drained (by anyone); its reason stays, and a job that still reaches it is refused
Action = Literal["none", "drain", "spare", "held"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    detail: str


def breaker_cap(total_nodes: int, max_fraction: float, min_nodes: int) -> int:
    return max(min_nodes, math.floor(total_nodes * max_fraction + 1e-9))


def recent_auto_drains(
    nodes: list[SlurmNode], now_epoch: float, window_seconds: float, exclude: str = ""
) -> list[str]:
    """Nodes slurmgpu drained automatically within the window (a reason without a time counts as recent)."""
    return sorted(
        n.name
        for n in nodes
        if n.name != exclude
        and n.drained_automatically
        and (n.reason_epoch_seconds is None or now_epoch - n.reason_epoch_seconds <= window_seconds)
    )


def decide(
    results: list[CheckResult],
    node: str,
    nodes: list[SlurmNode],
    now_epoch: float,
    *,
    max_fraction: float,
    min_nodes: int,
    window_seconds: float,
) -> Decision:
    failed = failures(results)
    if not failed:
        return Decision("none", "", "healthy")
    reason = drain_reason(failed)
    total = len(nodes)
    cap = breaker_cap(total, max_fraction, min_nodes)
    recent = recent_auto_drains(nodes, now_epoch, window_seconds, exclude=node)
    if len(recent) >= cap:
        return Decision(
            "spare",
            reason,
            f"circuit breaker: {len(recent)} of {total} nodes already drained by slurmgpu within "
            f"{window_seconds:g} s ({', '.join(recent)}; cap {cap}); {node} spared",
        )
    return Decision(
        "drain", reason, f"{len(recent)} of {total} nodes drained by slurmgpu recently (cap {cap})"
    )


def keep_after_race(
    node: str,
    nodes: list[SlurmNode],
    now_epoch: float,
    *,
    max_fraction: float,
    min_nodes: int,
    window_seconds: float,
) -> bool:
    """After draining: several prologs may have drained at once. Keep ours only if it is within the cap in a
    fixed order (reason time, then node name), so that every racer agrees on who stays drained."""
    cap = breaker_cap(len(nodes), max_fraction, min_nodes)
    drained = [
        n
        for n in nodes
        if n.drained_automatically
        and (n.reason_epoch_seconds is None or now_epoch - n.reason_epoch_seconds <= window_seconds)
    ]
    order = sorted(drained, key=lambda n: (n.reason_epoch_seconds or 0.0, n.name))
    return node in [n.name for n in order[:cap]]
