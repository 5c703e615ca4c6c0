"""The epilog: final reading, per-GPU usage from counter deltas and accounting stats, the job record, post-job
health (what changed while the job ran), owner files released. It always exits 0: a fault found here drains the
node for the jobs that come next, it never fails the job that just ran."""

from __future__ import annotations

import time
from collections.abc import Mapping

from slurmgpu.collection.aggregate import update
from slurmgpu.collection.usage import gpu_usage
from slurmgpu.config import Config
from slurmgpu.gpu.backend import open_backend
from slurmgpu.gpu.types import NodeReading
from slurmgpu.health.checks import XidEvent, epilog_checks
from slurmgpu.hooks import owners
from slurmgpu.hooks.runner import EXIT_OK
from slurmgpu.hooks.spool import read_baselines, read_job_meta, spool_path
from slurmgpu.hooks.spool import remove as spool_remove
from slurmgpu.log import HookLog
from slurmgpu.slurm.env import JobContext, job_context
from slurmgpu.store.db import Store
from slurmgpu.store.records import Baseline


def epilog(config: Config, env: Mapping[str, str], log: HookLog) -> int:
    ctx = job_context(env, default_cluster=config.cluster)
    if not ctx.gpus:
        return EXIT_OK
    spool = spool_path(config.path("state_dir", ctx.node), ctx.cluster, ctx.node, ctx.job_id)
    try:
        baselines = read_baselines(spool)
        store = Store.open(config.path("database", ctx.node))
        try:
            if baselines is None:
                if store.usage_recorded(ctx.cluster, ctx.job_id, ctx.node):
                    log("info", f"job {ctx.job_id}: already recorded on {ctx.node} (epilog run again)")
                else:
                    # Our prolog did not complete for this job here: Slurm also runs the epilog after a prolog that
                    # failed and drained the node. The job never used these GPUs: nothing to record.
                    log("warning", f"job {ctx.job_id}: no prolog baseline on {ctx.node}: nothing recorded")
                return EXIT_OK
            aggs = {a.minor: a for a in store.load_aggregates(ctx.cluster, ctx.node, [ctx.job_id])}
            since = min((a.last_sample_us for a in aggs.values()), default=None)
            reading = open_backend(config, ctx.node).read_node(with_accounting=True, samples_since_us=since)
            if reading.error:
                log("warning", f"job {ctx.job_id}: no final GPU reading: {reading.error}")
            found, missing = reading.select(tuple(sorted(baselines)))
            for minor in missing:
                log("warning", f"job {ctx.job_id}: gpu{minor} not readable at job end")
            # the agent's aggregate, brought up to the end of the job with the driver's latest samples
            final_aggs = {m: update(aggs[m], gpu) for m, gpu in found.items() if m in aggs and gpu.ok}
            usage = [
                gpu_usage(ctx.node, m, gpu, baselines[m], final_aggs.get(m))
                for m, gpu in sorted(found.items())
                if gpu.ok
            ]
            if final_aggs:
                store.save_aggregates(ctx.cluster, list(final_aggs.values()), time.time())
            store.save_job(ctx, list(baselines.values()), usage, time.time())
        finally:
            store.close()
        group = (read_job_meta(spool) or {}).get("dcgm_group")
        if isinstance(group, int):
            _dcgm_job_stats(config, ctx, group, reading, log)
        spool_remove(spool)
        log("info", f"job {ctx.job_id}: recorded {len(usage)} GPU(s) on {ctx.node}")
        try:  # the cluster-wide record in Slurm's AdminComment: best effort, never fails the epilog
            from slurmgpu.slurm.admincomment import mirror_job_record

            mirror_job_record(config, ctx, usage, log, env)
        except Exception as exc:
            log("warning", f"job {ctx.job_id}: GPU record not mirrored to AdminComment: {exc}")
        _post_job_health(config, ctx, reading, baselines, log)
    finally:
        owners.release(config.path("run_dir", ctx.node), ctx.gpus, ctx.job_id)  # the GPUs are free again
    return EXIT_OK


def _dcgm_job_stats(config: Config, ctx: JobContext, group: int, reading: NodeReading, log: HookLog) -> None:
    """DCGM's statistics of the job into its record; best effort (decision 5)."""
    from dataclasses import asdict

    from slurmgpu.collection.dcgm_stats import finish_job_stats

    try:
        stats = finish_job_stats(config, ctx, group, log)
        if stats is None:
            return
        by_index = {g.index: g.minor for g in reading.gpus if g.minor is not None}
        per_minor = {
            by_index[g.gpu_id]: {
                **asdict(g),
                "slowdown_power_pct": stats.slowdown_power_pct,
                "slowdown_thermal_pct": stats.slowdown_thermal_pct,
            }
            for g in stats.gpus
            if g.gpu_id in by_index
        }
        store = Store.open(config.path("database", ctx.node))
        try:
            store.save_dcgm_stats(ctx, per_minor)
        finally:
            store.close()
    except Exception as exc:
        log("warning", f"job {ctx.job_id}: DCGM job statistics not recorded: {type(exc).__name__}: {exc}")


def _post_job_health(
    config: Config, ctx: JobContext, reading: NodeReading, baselines: dict[int, Baseline], log: HookLog
) -> None:
    from slurmgpu.health.xid_source import all_xids

    if reading.error:  # NVML unusable at job end: nothing to compare, and not a GPU fault (as in the prolog)
        log("warning", f"job {ctx.job_id}: no post-job health check: {reading.error}")
        return

    elapsed = max((time.time() - b.taken_epoch_seconds for b in baselines.values()), default=0.0)
    try:
        during = _xids_during_job(all_xids(config, ctx.node, reading), baselines)
    except OSError as exc:
        log("warning", f"job {ctx.job_id}: kernel log unreadable, no XID check: {exc}")
        during = []
    results = epilog_checks(reading, baselines, elapsed, config.health, during)
    for r in results:
        if r.status != "ok":
            log(
                "warning" if r.status == "warn" else "error",
                f"job {ctx.job_id} after the job: {r.check} {r.where}: {r.detail}",
            )
    if any(r.status != "ok" for r in results):
        from slurmgpu.health.remediation import remediate

        remediate(
            config,
            cluster=ctx.cluster,
            node=ctx.node,
            source="epilog",
            job_id=ctx.job_id,
            results=results,
            reading=reading,
            log=log,
        )


def _xids_during_job(events: list[XidEvent], baselines: dict[int, Baseline]) -> list[XidEvent]:
    """Per GPU of the job, the XIDs beyond the count its baseline saw at job start."""
    seen: dict[int, int] = {}
    during = []
    for e in events:
        if e.minor is None or e.minor not in baselines:
            continue
        seen[e.minor] = seen.get(e.minor, 0) + 1
        before = baselines[e.minor].xid_count
        if before is not None and seen[e.minor] > before:
            during.append(e)
    return during
