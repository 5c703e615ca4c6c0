"""The prolog: health checks, GPU ownership, counter baselines. Runs before every job, so it stays lean:
SQLite, Slurm commands and the drain policy are only loaded when a check does not pass."""

from __future__ import annotations

from collections.abc import Mapping

from slurmgpu.config import Config
from slurmgpu.gpu.backend import open_backend
from slurmgpu.gpu.types import NodeReading
from slurmgpu.health.checks import XidEvent, prolog_checks
from slurmgpu.health.results import CheckResult, worst_status
from slurmgpu.health.xid_source import Watermark, all_xids, xid_counts_by_minor
from slurmgpu.hooks import owners
from slurmgpu.hooks.runner import EXIT_HARDWARE_FAULT, EXIT_OK
from slurmgpu.log import HookLog
from slurmgpu.slurm.env import JobContext, job_context


def prolog(config: Config, env: Mapping[str, str], log: HookLog) -> int:
    ctx = job_context(env, default_cluster=config.cluster)
    if not ctx.gpus:
        return EXIT_OK  # not a GPU job on this node
    reading = open_backend(config, ctx.node).read_node(with_processes=True)
    xids = _xids(config, ctx, reading, log)
    watermark = Watermark(config, ctx.node)
    results = prolog_checks(
        reading, ctx.gpus, config.health, xids=watermark.new(xids) if xids is not None else ()
    )
    if config.health.dcgm_in_prolog:
        from slurmgpu.health.dcgm_checks import dcgm_results

        results += dcgm_results(config, None, reading)
    for r in results:
        if r.status != "ok":
            log(
                "warning" if r.status == "warn" else "error",
                f"job {ctx.job_id} {r.check} {r.where}: {r.detail}",
            )
    if _needs_recording(config, ctx.node, results):
        from slurmgpu.health.remediation import remediate

        decision = remediate(
            config,
            cluster=ctx.cluster,
            node=ctx.node,
            source="prolog",
            job_id=ctx.job_id,
            results=results,
            reading=reading,
            log=log,
        )
        if decision.action in ("drain", "held"):
            return EXIT_HARDWARE_FAULT
    if xids is not None and not any(r.check == "xid" and r.status == "fail" for r in results):
        # seen and recorded; drain-class XIDs stay pending until an admin resumes the node
        watermark.advance(xids)
    owners.claim(config.path("run_dir", ctx.node), ctx.gpus, ctx.job_id)
    group = None
    if config.agent.dcgm_job_stats:
        from slurmgpu.collection.dcgm_stats import dcgm_wanted, start_job_stats

        if dcgm_wanted(config):
            group = start_job_stats(config, ctx, reading, log)
    _save_baselines(config, ctx, reading, xids, group)
    return EXIT_OK


def _xids(config: Config, ctx: JobContext, reading: NodeReading, log: HookLog) -> list[XidEvent] | None:
    try:
        return all_xids(config, ctx.node, reading)
    except (
        OSError
    ) as exc:  # an unreadable kernel log (containers) costs the XID check, not the job's accounting
        log("warning", f"job {ctx.job_id}: kernel log unreadable, no XID check: {exc}")
        return None


def _needs_recording(config: Config, node: str, results: list[CheckResult]) -> bool:
    """A store write only when something is wrong, or to clear a previous problem (a small status file knows)."""
    from slurmgpu.health.status_file import swap_status

    status = worst_status(results)
    previous = swap_status(config, node, status)
    return status != "ok" or previous != "ok"


def _save_baselines(
    config: Config, ctx: JobContext, reading: NodeReading, xids: list[XidEvent] | None, dcgm_group: int | None
) -> None:
    from slurmgpu.collection.usage import baseline_from
    from slurmgpu.hooks.spool import spool_path, write_baselines

    found, _ = reading.select(ctx.gpus)
    counts = xid_counts_by_minor(xids) if xids is not None else None
    baselines = [baseline_from(g, None if counts is None else counts.get(m, 0)) for m, g in found.items()]
    meta = {
        "cluster": ctx.cluster,
        "user": ctx.user,
        "account": ctx.account,
        "partition": ctx.partition,
        "gpus": list(ctx.gpus),
        "start_epoch_seconds": min((b.taken_epoch_seconds for b in baselines), default=0.0),
        "dcgm_group": dcgm_group,
    }
    write_baselines(
        spool_path(config.path("state_dir", ctx.node), ctx.cluster, ctx.node, ctx.job_id), baselines, meta
    )
