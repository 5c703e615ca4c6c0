"""Where report data comes from: the local job store, or Slurm accounting (sacct for the jobs and their allocated
GPUs, the AdminComment records the epilogs mirrored for their GPU telemetry).

Both yield the same cells (usage per group, partition and GPU model) for reports/aggregate.py. A job counts in the
window in which it ended: for the store, when its GPU record was first written (the end of the job on its first
node); for Slurm accounting, its End time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slurmgpu.config import Config
from slurmgpu.errors import SlurmgpuError
from slurmgpu.reports.aggregate import RateCard, Report, build_report
from slurmgpu.slurm.accounting import AccountingJob
from slurmgpu.slurm.commands import Slurm
from slurmgpu.slurm.hostlist import expand
from slurmgpu.store.db import Store, read_consistently
from slurmgpu.store.mirror_codec import decode, is_ours
from slurmgpu.store.queries import (
    ReportFilter,
    cells,
    cells_from_usages,
    top_jobs,
    top_jobs_from_usages,
)
from slurmgpu.store.usage import JobUsage, UsageSums, job_usages

Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    pass


def store_report(
    config: Config,
    report_filter: ReportFilter,
    by: tuple[str, ...],
    *,
    top: int = 10,
    progress: Progress = _no_progress,
) -> Report:
    path = config.path("database")
    idle = config.thresholds.idle_utilization_pct

    def read(store: Store) -> Report:
        progress(0, 2)
        found = cells(store, report_filter, by, idle)
        progress(1, 2)
        wasteful = top_jobs(store, report_filter, idle, top)
        progress(2, 2)
        return build_report(
            found,
            wasteful,
            by=by,
            report_filter=report_filter,
            source="store",
            source_detail=str(path),
            rates=RateCard.from_config(config.reports),
            idle_pct=idle,
        )

    return read_consistently(path, read)


@dataclass(frozen=True)
class AccountingUsage:
    usages: list[JobUsage]
    jobs_without_telemetry: int
    partial_jobs: int
    damaged_records: int
    foreign_records: int


def usages_from_accounting(
    jobs: list[AccountingJob],
    report_filter: ReportFilter,
    *,
    cluster: str,
    idle_pct: float,
    progress: Progress = _no_progress,
) -> AccountingUsage:
    """JobUsage rows of the finished GPU jobs that ended in the window: from our AdminComment record where there is
    one, else the allocation alone (GPUs x elapsed; flagged). A record missing some of the job's GPUs (a node whose
    epilog did not mirror) is completed with the missing GPUs' allocation, also without telemetry."""
    out: list[JobUsage] = []
    blind = partial = damaged = foreign = 0
    for done, job in enumerate(jobs, 1):
        progress(done, len(jobs))
        end = job.end_epoch_seconds
        if not job.final or end is None or not job.alloc_gpus:
            continue
        if not report_filter.since_epoch <= end < report_filter.until_epoch:
            continue
        record = None
        if job.admin_comment.strip():
            if not is_ours(job.admin_comment):
                foreign += 1
            else:
                try:
                    record = decode(job.admin_comment)
                except SlurmgpuError:
                    damaged += 1
                if record is not None and record.job_id != job.job_id_raw:
                    record, damaged = None, damaged + 1
        rows: list[JobUsage] = []
        recorded_gpus = 0
        if record is not None:
            groups = record.groups(idle_pct)
            rows = job_usages(
                cluster=record.cluster,
                job_id=job.job_id_raw,
                user=job.user,
                account=job.account,
                partition=job.partition,
                end_epoch_seconds=end,
                groups=groups,
                job_display_id=job.job_id,
            )
            recorded_gpus = sum(g.sums.gpus for g in groups)
            if set(expand(job.node_list)) - set(record.nodes) or recorded_gpus < job.alloc_gpus:
                partial += 1
        elif job.alloc_gpus:
            blind += 1
        missing = job.alloc_gpus - recorded_gpus
        if missing > 0:
            rows.append(
                JobUsage(
                    cluster=record.cluster if record is not None else cluster,
                    job_id=job.job_id_raw,
                    model="",
                    user=job.user,
                    account=job.account,
                    partition=job.partition,
                    end_epoch_seconds=end,
                    job_share=0 if rows else 1,
                    sums=UsageSums(gpus=missing, gpu_seconds=float(missing * job.elapsed_seconds)),
                    telemetry=False,
                    job_display_id=job.job_id,
                )
            )
        out.extend(rows)
    return AccountingUsage(out, blind, partial, damaged, foreign)


def slurmdbd_report(
    config: Config,
    report_filter: ReportFilter,
    by: tuple[str, ...],
    *,
    top: int = 10,
    progress: Progress = _no_progress,
    slurm: Slurm | None = None,
) -> Report:
    from slurmgpu.slurm.env import cluster_name

    slurm = slurm or Slurm.for_config(config)
    jobs = slurm.accounting_jobs(
        report_filter.since_epoch,
        report_filter.until_epoch,
        account=report_filter.account,
        user=report_filter.user,
        partition=report_filter.partition,
        cluster=report_filter.cluster or None,
    )
    idle = config.thresholds.idle_utilization_pct
    got = usages_from_accounting(
        jobs,
        report_filter,
        cluster=report_filter.cluster or cluster_name(config.cluster, config.paths.slurm_conf),
        idle_pct=idle,
        progress=progress,
    )
    notes = []
    if got.jobs_without_telemetry:
        hours = sum(u.sums.gpu_hours_allocated for u in got.usages if not u.telemetry and u.job_share)
        notes.append(
            f"{got.jobs_without_telemetry} job(s) without a GPU record ({hours:.4g} GPU-hours): counted in GPU-hours "
            "allocated only (GPUs x elapsed from Slurm); used, efficiency, idle, memory and energy cover the others"
        )
    if got.partial_jobs:
        notes.append(
            f"{got.partial_jobs} job(s) with GPU records from only some of their nodes: the other GPUs count as "
            "allocated only"
        )
    if got.foreign_records:
        notes.append(f"{got.foreign_records} job(s) whose AdminComment holds another tool's content")
    if got.damaged_records:
        notes.append(f"{got.damaged_records} job(s) with a damaged slurmgpu AdminComment record (ignored)")
    return build_report(
        cells_from_usages(got.usages, by),
        top_jobs_from_usages(got.usages, top),
        by=by,
        report_filter=report_filter,
        source="slurmdbd",
        source_detail="Slurm accounting (sacct: AllocTRES, AdminComment)",
        rates=RateCard.from_config(config.reports),
        idle_pct=idle,
        notes=tuple(notes),
    )
