"""The epilog: final reading, per-GPU usage from counter deltas and accounting stats, job record, owner files."""

from __future__ import annotations

import time
from collections.abc import Mapping

from slurmgpu.collection.usage import gpu_usage
from slurmgpu.config import Config
from slurmgpu.gpu.backend import open_backend
from slurmgpu.hooks import owners
from slurmgpu.hooks.runner import EXIT_OK
from slurmgpu.hooks.spool import read_baselines, spool_path
from slurmgpu.hooks.spool import remove as spool_remove
from slurmgpu.log import HookLog
from slurmgpu.slurm.env import job_context
from slurmgpu.store.db import Store


def epilog(config: Config, env: Mapping[str, str], log: HookLog) -> int:
    ctx = job_context(env, default_cluster=config.cluster)
    if not ctx.gpus:
        return EXIT_OK
    run_dir = config.path("run_dir", ctx.node)
    spool = spool_path(config.path("state_dir", ctx.node), ctx.cluster, ctx.node, ctx.job_id)
    try:
        store = Store.open(config.path("database", ctx.node))
        try:
            # The prolog's spool file; after a first epilog moved it into the store, the store (a re-run epilog).
            baselines = read_baselines(spool) or store.load_baselines(ctx.cluster, ctx.job_id, ctx.node)
            if not baselines:
                # Our prolog did not complete for this job here: Slurm also runs the epilog after a prolog that
                # failed and drained the node. The job never used these GPUs, so there is nothing to record.
                log("warning", f"job {ctx.job_id}: no prolog baseline on {ctx.node}: nothing recorded")
                return EXIT_OK
            reading = open_backend(config, ctx.node).read_node(with_accounting=True)
            if reading.error:
                log("warning", f"job {ctx.job_id}: no final GPU reading: {reading.error}")
            found, missing = reading.select(tuple(sorted(baselines)))
            for minor in missing:
                log("warning", f"job {ctx.job_id}: gpu{minor} not readable at job end")
            usage = [gpu_usage(ctx.node, m, gpu, baselines[m]) for m, gpu in sorted(found.items()) if gpu.ok]
            store.save_job(ctx, list(baselines.values()), usage, time.time())
        finally:
            store.close()
        spool_remove(spool)
        log("info", f"job {ctx.job_id}: recorded {len(usage)} GPU(s) on {ctx.node}")
    finally:
        owners.release(run_dir, ctx.gpus, ctx.job_id)  # whatever else failed, the GPUs are free again
    return EXIT_OK
