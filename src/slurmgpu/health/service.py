"""On-demand health checks and the admin's drain and resume (what `slurmgpu health|nodes|drain|resume` call)."""

from __future__ import annotations

import getpass
import os
import socket
import time
from dataclasses import dataclass

from slurmgpu.config import Config
from slurmgpu.errors import InputError, SlurmError, StoreError
from slurmgpu.gpu.backend import open_backend
from slurmgpu.gpu.types import NodeReading
from slurmgpu.health.checks import prolog_checks
from slurmgpu.health.policy import Decision
from slurmgpu.health.remediation import remediate
from slurmgpu.health.results import CheckResult, worst_status
from slurmgpu.health.status_file import swap_status
from slurmgpu.health.xid_source import Watermark, all_xids
from slurmgpu.log import HookLog
from slurmgpu.slurm.commands import Slurm
from slurmgpu.slurm.env import cluster_name
from slurmgpu.slurm.nodes import MANUAL_PREFIX, SlurmNode
from slurmgpu.store.db import Store

EXIT_HEALTHY, EXIT_WARNINGS, EXIT_FAILURES, EXIT_CANNOT_CHECK = 0, 1, 2, 3


@dataclass(frozen=True)
class HealthReport:
    node: str
    status: str  # ok | warn | fail
    results: tuple[CheckResult, ...]
    action: str  # none | drain | spare | resume
    action_detail: str

    @property
    def exit_code(self) -> int:
        return {"ok": EXIT_HEALTHY, "warn": EXIT_WARNINGS}.get(self.status, EXIT_FAILURES)


def _cluster(config: Config) -> str:
    return cluster_name(config.cluster, config.paths.slurm_conf)


def actor() -> str:
    """Who runs the command (the sudo caller when there is one)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def local_node(node: str | None) -> str:
    return node or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def run_health(
    config: Config,
    node: str,
    *,
    diag_level: int | None = None,
    slurm_mode: bool = False,
    log: HookLog | None = None,
) -> HealthReport:
    """Every check on the node's GPUs now. With slurm_mode (HealthCheckProgram): drain on failure through the
    breaker, and lift slurmgpu's own automatic drain once the node is healthy again."""
    log = log or HookLog(config.path("log_file", node), "health")
    reading = open_backend(config, node).read_node(with_processes=True)
    watermark = Watermark(config, node)
    try:
        events = all_xids(config, node, reading)
        new = watermark.new(events)
    except OSError as exc:
        events, new = None, []
        log("warning", f"kernel log unreadable, no XID check: {exc}")
    expected = config.health.expected_gpus or _slurm_gpus(config, node)
    results = prolog_checks(reading, (), config.health, expected_gpus=expected, xids=new)
    results += _dcgm_results(config, diag_level, reading)
    status = worst_status(results)
    action, detail = "none", ""
    if slurm_mode:
        decision = remediate(
            config,
            cluster=_cluster(config),
            node=node,
            source="health",
            job_id=None,
            results=results,
            reading=reading,
            log=log,
        )
        action, detail = decision.action, decision.detail
        if status != "fail":
            action, detail = _lift_own_drain(config, node, log) or (action, detail)
            if events is not None:
                watermark.advance(events)
    else:
        _record(config, node, results)
    swap_status(config, node, status)
    return HealthReport(node, status, tuple(results), action, detail)


def _slurm_gpus(config: Config, node: str) -> int | None:
    try:
        return Slurm.for_config(config).node_gpus(node)
    except SlurmError:
        return None  # no Slurm here (or not this node): the count check needs [health] expected_gpus


def _dcgm_results(config: Config, diag_level: int | None, reading: NodeReading) -> list[CheckResult]:
    from slurmgpu.health.dcgm_checks import dcgm_results

    return dcgm_results(config, diag_level, reading)


def _record(config: Config, node: str, results: list[CheckResult]) -> None:
    try:
        store = Store.open(config.path("database", node))
    except StoreError:
        return  # not root: the check still answers, it just is not remembered
    try:
        store.save_health(
            cluster=_cluster(config),
            node=node,
            source="health",
            job_id=None,
            results=results,
            now=time.time(),
        )
    finally:
        store.close()


def _lift_own_drain(config: Config, node: str, log: HookLog) -> tuple[str, str] | None:
    slurm = Slurm.for_config(config)
    me = next((n for n in slurm.nodes() if n.name == node), None)
    if me is None or not me.drained_automatically:
        return None
    slurm.resume(node)
    _record_action(config, node, "resume", me.reason, "health check passed", source="health")
    log("info", f"{node} healthy again: lifted slurmgpu's drain ({me.reason})")
    return "resume", f"lifted slurmgpu's drain ({me.reason})"


def _record_action(
    config: Config, node: str, action: str, reason: str, note: str, source: str = "cli"
) -> None:
    store = Store.open(config.path("database", node))
    try:
        store.record_drain(
            cluster=_cluster(config),
            node=node,
            action=action,
            reason=reason,
            actor=actor(),
            source=source,
            job_id=None,
            readings={"note": note},
        )
    finally:
        store.close()


@dataclass(frozen=True)
class NodeView:
    name: str
    state: str
    reason: str
    reason_time: str | None
    reason_user: str
    last_health: str | None
    last_health_time: float | None
    last_health_summary: str | None


def nodes_view(config: Config) -> list[NodeView]:
    nodes = Slurm.for_config(config).nodes()
    last: dict[str, dict[str, object]] = {}
    try:
        store = Store.open(config.path("database"), readonly=True)
        try:
            for n in nodes:
                row = store.last_health(_cluster(config), n.name)
                if row:
                    last[n.name] = row
        finally:
            store.close()
    except StoreError:
        pass  # no store on this host: Slurm's view alone
    return [
        NodeView(
            n.name,
            n.state,
            n.reason,
            n.reason_time,
            n.reason_user,
            str(last[n.name]["status"]) if n.name in last else None,
            float(last[n.name]["epoch"]) if n.name in last else None,  # type: ignore[arg-type]
            str(last[n.name]["summary"]) if n.name in last else None,
        )
        for n in nodes
    ]


def drain_nodes(config: Config, names: list[str], reason: str) -> list[str]:
    """Drain by hand; the reason says it was manual, so automatic resumes never lift it."""
    text = " ".join(reason.split())
    if not text:
        raise InputError("--reason must say why")
    full = f"{MANUAL_PREFIX}{text}"
    _require_writable_store(config, names)
    slurm = Slurm.for_config(config)
    known = {n.name for n in slurm.nodes()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown node(s): {', '.join(unknown)}")
    out = []
    for name in names:
        slurm.drain(name, full)
        _record_action(config, name, "drain", full, "manual drain")
        out.append(f"{name}: drained ({full})")
    return out


def resume_nodes(config: Config, names: list[str], *, force: bool) -> tuple[list[str], list[str]]:
    """Lift slurmgpu's drains. Refuses drains set by others, and nodes whose last check failed unless forced.
    Returns (done, refused) messages."""
    _require_writable_store(config, names)
    slurm = Slurm.for_config(config)
    table: dict[str, SlurmNode] = {n.name: n for n in slurm.nodes()}
    done, refused = [], []
    for name in names:
        node = table.get(name)
        if node is None:
            refused.append(f"{name}: unknown node")
            continue
        if not node.drained:
            refused.append(f"{name}: not drained (state {node.state})")
            continue
        if not node.drained_by_slurmgpu:
            refused.append(f"{name}: drained by someone else ({node.reason!r}); use scontrol to resume it")
            continue
        last = _last_health(config, name)
        if last is not None and last["status"] == "fail" and not force:
            refused.append(
                f"{name}: its last health check failed ({last['summary']}); fix it, re-run "
                "`slurmgpu health`, or pass --force"
            )
            continue
        slurm.resume(name)
        _record_action(config, name, "resume", node.reason, "forced" if force else "manual resume")
        _acknowledge_xids(config, name)
        done.append(f"{name}: resumed (was: {node.reason})")
    return done, refused


def _require_writable_store(config: Config, names: list[str]) -> None:
    """Every drain and resume is recorded: check that we can before touching any node (not root: stop here)."""
    for name in names:
        path = config.path("database", name)
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not os.access(probe, os.W_OK):
            raise StoreError(f"cannot record in {path}: run as root (drain and resume are recorded)")


def _last_health(config: Config, node: str) -> dict[str, object] | None:
    try:
        store = Store.open(config.path("database", node), readonly=True)
    except StoreError:
        return None
    try:
        return store.last_health(_cluster(config), node)
    finally:
        store.close()


def _acknowledge_xids(config: Config, node: str) -> None:
    """The admin has looked: XIDs logged so far no longer count (where this host can read the node's log)."""
    try:
        reading = NodeReading(gpus=())
        watermark = Watermark(config, node)
        watermark.advance(all_xids(config, node, reading))
    except OSError:
        pass


__all__ = [
    "Decision",
    "HealthReport",
    "NodeView",
    "drain_nodes",
    "local_node",
    "nodes_view",
    "resume_nodes",
    "run_health",
]
