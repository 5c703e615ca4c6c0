"""Find a job in the store (and Slurm accounting) and summarize it."""

from __future__ import annotations

from slurmgpu.config import Config
from slurmgpu.errors import NotFoundError, SlurmError
from slurmgpu.reports.job_summary import JobSummary, summarize
from slurmgpu.slurm.commands import SacctJob, Slurm
from slurmgpu.slurm.jobid import parse_job_id
from slurmgpu.store.db import Store


def job_summary(config: Config, text: str, cluster: str = "") -> JobSummary:
    job = parse_job_id(text)  # bad input fails before anything is opened
    slurm = Slurm(
        config.path("slurm_bin_dir"), config.paths.slurm_conf, config.thresholds.slurm_command_timeout_seconds
    )
    sacct: SacctJob | None = None
    slurm_error: str | None = None
    try:
        pending = slurm.sacct_jobs(str(job))  # sacct runs while the store is read
    except SlurmError as exc:
        pending, slurm_error = None, str(exc)
    store = Store.open(config.path("database"), readonly=True)
    if pending is not None:
        try:
            rows = pending()
            sacct = rows[0] if rows else None
        except SlurmError as exc:
            slurm_error = str(exc)  # the store alone still answers; say what is missing
    try:
        cluster = cluster or config.cluster
        try:
            found_cluster, raw = store.resolve_job(job, cluster)
        except NotFoundError:
            if sacct is None:
                if slurm_error is None:
                    raise NotFoundError(
                        f"unknown job {job}: neither Slurm accounting nor the job store know it"
                    ) from None
                raise
            # Array tasks and het components: Slurm knows the raw id even when the prolog env did not say it.
            found_cluster, raw = store.resolve_job(parse_job_id(str(sacct.job_id_raw)), cluster)
        record = store.job(found_cluster, raw)
        aggregates = store.job_aggregates(found_cluster, raw)
    except NotFoundError:
        if sacct is not None and sacct.state in ("RUNNING", "PENDING", "COMPLETING", "SUSPENDED", "REQUEUED"):
            raise NotFoundError(
                f"job {job} is {sacct.state}: its GPU record is written when it ends"
            ) from None
        if sacct is not None:
            raise NotFoundError(
                f"job {job} has no GPU record: it used no GPU, or ran where slurmgpu's hooks "
                "are not installed"
            ) from None
        raise
    finally:
        store.close()
    assert record is not None
    if sacct is not None and sacct.job_id_raw != raw:
        sacct = None  # the id matched another job in Slurm's numbering; do not mix them
    return summarize(record, sacct, config.thresholds, slurm_error, aggregates)
