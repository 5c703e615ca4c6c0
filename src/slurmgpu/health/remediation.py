"""Apply a health result: drain through Slurm within the circuit breaker, and record what happened.

Used by the prolog, the epilog and `slurmgpu health --slurm`. Recording is best effort (the drain already happened
or was spared); the Slurm side is what protects jobs.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from slurmgpu.config import Config
from slurmgpu.errors import SlurmError
from slurmgpu.gpu.types import NodeReading
from slurmgpu.health.policy import Decision, decide, keep_after_race
from slurmgpu.health.results import CheckResult, worst_status
from slurmgpu.log import HookLog
from slurmgpu.slurm.commands import Slurm
from slurmgpu.slurm.nodes import SlurmNode


def _nodes(slurm: Slurm, log: HookLog) -> list[SlurmNode]:
    try:
        return slurm.nodes()
    except SlurmError as exc:
        # Without the cluster's view the breaker cannot count recent drains: it allows this one (its minimum).
        log("warning", f"circuit breaker cannot list nodes: {exc}")
        return []


def remediate(
    config: Config,
    *,
    cluster: str,
    node: str,
    source: str,
    job_id: int | None,
    results: list[CheckResult],
    reading: NodeReading,
    log: HookLog,
    update_last: bool = True,
) -> Decision:
    """Drain (or spare) the node for failed checks; record the result and events. Returns what was decided.

    A node that is already drained (by slurmgpu, an admin or another tool) keeps its reason: draining again would
    replace it, turn a manual drain into one a health check may lift, and keep renewing the breaker's window.
    `update_last` is off for partial results (the agent's single XID) that must not replace the node's last full
    check."""
    h = config.health
    slurm = Slurm.for_config(config)
    decision = Decision("none", "", "healthy")
    if any(r.status == "fail" for r in results):
        nodes = _nodes(slurm, log)
        me = next((n for n in nodes if n.name == node), None)
        if me is not None and me.drained:
            decision = Decision("held", me.reason, f"already drained ({me.reason})")
            log("warning", f"{_job(job_id)}{node} already drained ({me.reason}); not drained again")
            _record(config, cluster, node, source, job_id, results, reading, decision, log, update_last)
            return decision
        decision = decide(
            results,
            node,
            nodes,
            time.time(),
            max_fraction=h.breaker_max_fraction,
            min_nodes=h.breaker_min_nodes,
            window_seconds=h.breaker_window_seconds,
        )
    if decision.action == "drain":
        try:
            slurm.drain(node, decision.reason)
            log("error", f"{_job(job_id)}drained {node}: {decision.reason}")
            after = _nodes(slurm, log)
            if after and not keep_after_race(
                node,
                after,
                time.time(),
                max_fraction=h.breaker_max_fraction,
                min_nodes=h.breaker_min_nodes,
                window_seconds=h.breaker_window_seconds,
            ):
                mine = next((n for n in after if n.name == node), None)
                if mine is not None and mine.reason == decision.reason:
                    slurm.resume(node)
                    decision = Decision(
                        "spare",
                        decision.reason,
                        "circuit breaker: other nodes were drained at the same moment and the cap is "
                        f"reached; {node} returned to service",
                    )
                # else someone changed the node's reason meanwhile: it stays drained, theirs to lift
        except SlurmError as exc:
            # The fault is real: the prolog still fails and Slurm drains the node itself ("Prolog error").
            log("error", f"{_job(job_id)}{decision.reason}; drain through scontrol failed: {exc}")
    if decision.action == "spare":
        log("critical", f"{_job(job_id)}{node} NOT drained: {decision.detail}; fault: {decision.reason}")
    _record(config, cluster, node, source, job_id, results, reading, decision, log, update_last)
    return decision


def _job(job_id: int | None) -> str:
    return "" if job_id is None else f"job {job_id}: "


def _record(
    config: Config,
    cluster: str,
    node: str,
    source: str,
    job_id: int | None,
    results: list[CheckResult],
    reading: NodeReading,
    decision: Decision,
    log: HookLog,
    update_last: bool = True,
) -> None:
    try:
        from slurmgpu.store.db import Store

        now = time.time()
        store = Store.open(config.path("database", node))
        try:
            extra = []
            if decision.action == "spare":
                extra = [CheckResult("circuit-breaker", "fail", f"CRITICAL: {decision.detail}")]
            store.save_health(
                cluster=cluster,
                node=node,
                source=source,
                job_id=job_id,
                results=results + extra,
                now=now,
                update_last=update_last,
            )
            if update_last:
                from slurmgpu.health.status_file import swap_status

                swap_status(config, node, worst_status(results + extra))
            if decision.action == "drain":
                named = {r.minor for r in results if r.status == "fail"}
                store.record_drain(
                    cluster=cluster,
                    node=node,
                    action="drain",
                    reason=decision.reason,
                    actor="root",
                    source=source,
                    job_id=job_id,
                    now=now,
                    readings=[asdict(g) for g in reading.gpus if g.status != "ok" or g.minor in named],
                )
        finally:
            store.close()
    except Exception as exc:
        log("error", f"{_job(job_id)}health result of {node} not recorded: {exc}")
