"""DCGM job statistics around a job, when dcgmi is installed (never required, never fails a job).

Prolog: a DCGM group of the job's GPUs (DCGM names GPUs by NVML index, so the job's device minors are mapped
through the reading), stats watches that keep samples longer than any job runs (DCGM's default of one hour loses
long jobs), and `dcgmi stats -s JOB`. Epilog: `-x JOB`, `-v -j JOB` parsed into per-GPU values, `-r JOB`, group
removed. Every dcgmi failure is logged and swallowed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from slurmgpu.config import Config
from slurmgpu.gpu.types import NodeReading
from slurmgpu.log import HookLog
from slurmgpu.slurm.env import JobContext

if TYPE_CHECKING:
    from slurmgpu.gpu.dcgm import Dcgmi, DcgmJobStats


def _dcgmi(config: Config) -> Dcgmi:
    from slurmgpu.gpu.dcgm import Dcgmi

    return Dcgmi(
        Path(config.health.dcgmi_path), timeout_seconds=config.thresholds.slurm_command_timeout_seconds
    )


def dcgm_wanted(config: Config) -> bool:
    return config.agent.dcgm_job_stats and Path(config.health.dcgmi_path).is_file()


def start_job_stats(config: Config, ctx: JobContext, reading: NodeReading, log: HookLog) -> int | None:
    """Start recording; returns the DCGM group id to hand to the epilog, or None."""
    from slurmgpu.gpu.dcgm import DcgmError

    found, _ = reading.select(ctx.gpus)
    gpu_ids = sorted(g.index for g in found.values())
    if not gpu_ids:
        return None
    dcgmi = _dcgmi(config)
    group = None
    try:
        group = dcgmi.group_create(f"slurmgpu-{ctx.job_id}", gpu_ids)
        dcgmi.stats_watch(group, int(config.agent.dcgm_stats_keep_age_seconds))
        dcgmi.stats_start(group, str(ctx.job_id))
        return group
    except DcgmError as exc:
        log("warning", f"job {ctx.job_id}: DCGM job statistics not started: {exc}")
        if group is not None:
            with contextlib.suppress(DcgmError):
                dcgmi.group_delete(group)
        return None


def finish_job_stats(config: Config, ctx: JobContext, group: int, log: HookLog) -> DcgmJobStats | None:
    """Stop, read and forget the job's statistics; remove its group."""
    from slurmgpu.gpu.dcgm import DcgmError

    dcgmi = _dcgmi(config)
    stats = None
    try:
        dcgmi.stats_stop(str(ctx.job_id))
        stats = dcgmi.stats_job(str(ctx.job_id))
        if stats.error:
            log("warning", f"job {ctx.job_id}: DCGM job statistics partly unreadable: {stats.error}")
    except DcgmError as exc:
        log("warning", f"job {ctx.job_id}: DCGM job statistics not read: {exc}")
    try:
        dcgmi.stats_remove(str(ctx.job_id))
    except DcgmError as exc:
        log("warning", f"job {ctx.job_id}: DCGM cleanup: {exc}")
    try:
        dcgmi.group_delete(group)
    except DcgmError as exc:
        log("warning", f"job {ctx.job_id}: DCGM cleanup: {exc}")
    return stats
