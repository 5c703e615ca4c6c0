"""The prolog: health gate, GPU ownership, counter baselines. Runs before every job, so it stays lean."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from slurmgpu.config import Config
from slurmgpu.gpu.backend import open_backend
from slurmgpu.gpu.types import NodeReading
from slurmgpu.health.gate import prolog_gate
from slurmgpu.health.results import CheckResult, drain_reason, failures
from slurmgpu.hooks import owners
from slurmgpu.hooks.runner import EXIT_HARDWARE_FAULT, EXIT_OK
from slurmgpu.log import HookLog
from slurmgpu.slurm.env import JobContext, job_context


def prolog(config: Config, env: Mapping[str, str], log: HookLog) -> int:
    ctx = job_context(env, default_cluster=config.cluster)
    if not ctx.gpus:
        return EXIT_OK  # not a GPU job on this node
    reading = open_backend(config, ctx.node).read_node()
    results = prolog_gate(reading, ctx.gpus)
    for r in results:
        if r.status != "ok":
            log(
                "warning" if r.status == "warn" else "error",
                f"job {ctx.job_id} {r.check} {r.where}: {r.detail}",
            )
    failed = failures(results)
    if failed:
        return _drain(config, ctx, reading, results, failed, log)
    owners.claim(config.path("run_dir", ctx.node), ctx.gpus, ctx.job_id)
    _save_baselines(config, ctx, reading, log)
    return EXIT_OK


def _save_baselines(config: Config, ctx: JobContext, reading: NodeReading, log: HookLog) -> None:
    from slurmgpu.collection.usage import baseline_from
    from slurmgpu.gpu.xid import count_by_bus, read_kernel_log, short_bus_id
    from slurmgpu.hooks.spool import spool_path, write_baselines

    found, missing = reading.select(ctx.gpus)
    if missing:
        log("warning", f"job {ctx.job_id}: no baseline for GPUs {list(missing)} (not visible through NVML)")
    xids = count_by_bus(read_kernel_log(kernel_log_path(config, ctx.node)))
    baselines = [
        baseline_from(g, xids.get(short_bus_id(g.pci_bus_id), 0) if g.pci_bus_id else None)
        for g in found.values()
    ]
    write_baselines(
        spool_path(config.path("state_dir", ctx.node), ctx.cluster, ctx.node, ctx.job_id), baselines
    )


def kernel_log_path(config: Config, node: str) -> Path:
    if config.backend == "simulated":
        return config.sim_state_dir() / f"{node}.kmsg"
    return Path("/dev/kmsg")


def _drain(
    config: Config,
    ctx: JobContext,
    reading: NodeReading,
    results: list[CheckResult],
    failed: list[CheckResult],
    log: HookLog,
) -> int:
    """Drain with a precise reason, then fail the prolog so Slurm requeues the job elsewhere."""
    from slurmgpu.slurm.commands import Slurm

    reason = drain_reason(failed)
    slurm = Slurm(
        config.path("slurm_bin_dir"), config.paths.slurm_conf, config.thresholds.slurm_command_timeout_seconds
    )
    from slurmgpu.errors import SlurmError

    try:
        slurm.drain(ctx.node, reason)
        log("error", f"job {ctx.job_id}: drained {ctx.node}: {reason}")
    except SlurmError as exc:
        # The fault is real: still fail the prolog, and Slurm drains the node itself ("Prolog error").
        log("error", f"job {ctx.job_id}: {reason}; drain through scontrol failed: {exc}")
    _record_drain(config, ctx, reading, failed, reason, log)
    return EXIT_HARDWARE_FAULT


def _record_drain(
    config: Config,
    ctx: JobContext,
    reading: NodeReading,
    failed: list[CheckResult],
    reason: str,
    log: HookLog,
) -> None:
    """Best effort: the drain already happened; a store problem must not turn it into a success."""
    try:
        from dataclasses import asdict

        from slurmgpu.store.db import Store

        store = Store.open(config.path("database", ctx.node))
        try:
            for r in failed:
                store.record_health_event(
                    cluster=ctx.cluster,
                    node=ctx.node,
                    minor=r.minor,
                    job_id=ctx.job_id,
                    hook="prolog",
                    check_name=r.check,
                    severity=r.status,
                    detail=r.detail,
                )
            store.record_drain(
                cluster=ctx.cluster,
                node=ctx.node,
                action="drain",
                reason=reason,
                actor="root",
                source="prolog",
                job_id=ctx.job_id,
                readings=[asdict(g) for g in reading.gpus if g.status != "ok" or g.minor in ctx.gpus],
            )
        finally:
            store.close()
    except Exception as exc:
        log("error", f"job {ctx.job_id}: drain of {ctx.node} not recorded: {exc}")
