"""Find a job in the store (and Slurm accounting) and summarize it.

Where the record comes from: this node's job store first; when the store does not know the job (a login node has no
store, and a node's store only knows its own GPUs), the record the epilogs mirrored into the job's AdminComment in
Slurm's accounting database. A multi-node job whose local rows miss some of its nodes takes those nodes' rows from
the AdminComment record.

Who may see it: the job's owner, root, and members of `[reports] admin_groups`; anyone else is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from slurmgpu.access import AccessError, Viewer, current_viewer
from slurmgpu.collection.aggregate import JobGpuAggregate
from slurmgpu.config import Config
from slurmgpu.errors import NotFoundError, SlurmError, SlurmgpuError, StoreError
from slurmgpu.reports.job_summary import JobSummary, summarize
from slurmgpu.slurm.commands import SacctJob, Slurm
from slurmgpu.slurm.jobid import JobId, parse_job_id
from slurmgpu.store.db import Store
from slurmgpu.store.records import JobRecord

if TYPE_CHECKING:  # the AdminComment path is imported only when a job needs it
    from slurmgpu.store.mirror_codec import MirrorRecord
    from slurmgpu.store.usage import ModelGroup

UNFINISHED = ("RUNNING", "PENDING", "COMPLETING", "SUSPENDED", "REQUEUED")


@dataclass(frozen=True)
class _Found:
    record: JobRecord
    aggregates: Sequence[JobGpuAggregate]


def _lookup(store: Store, job: JobId, cluster: str) -> _Found | None:
    try:
        found_cluster, raw = store.resolve_job(job, cluster)
    except NotFoundError:
        return None
    record = store.job(found_cluster, raw)
    if record is None:
        return None
    return _Found(record, store.job_aggregates(found_cluster, raw))


def _refuse(job: JobId, viewer: Viewer) -> AccessError:
    return AccessError(f"job {job} is another user's job: only its owner and {viewer.who_may()} may see it")


def job_summary(config: Config, text: str, cluster: str = "") -> JobSummary:
    from slurmgpu.store.db import read_consistently

    job = parse_job_id(text)  # bad input fails before anything is opened
    viewer = current_viewer(config)
    slurm = Slurm.for_config(config)
    sacct: SacctJob | None = None
    slurm_error: str | None = None
    try:
        pending = slurm.sacct_jobs(str(job))  # sacct runs while the store is read
    except SlurmError as exc:
        pending, slurm_error = None, str(exc)
    cluster = cluster or config.cluster
    path = config.path("database")
    store_error: StoreError | None = None
    try:
        found = read_consistently(path, lambda store: _lookup(store, job, cluster))
    except StoreError as exc:  # no store here (a login node): Slurm accounting may still have the record
        found, store_error = None, exc
    if pending is not None:
        try:
            rows = pending()
            sacct = rows[0] if rows else None
        except SlurmError as exc:
            slurm_error = str(exc)  # the store alone still answers; say what is missing
    if sacct is not None and not viewer.may_see(sacct.user):
        raise _refuse(job, viewer)
    if found is None and sacct is not None and store_error is None:
        # Array tasks and het components: Slurm knows the raw id even when the prolog env did not say it.
        raw_id = parse_job_id(str(sacct.job_id_raw))
        if raw_id != job:
            found = read_consistently(path, lambda store: _lookup(store, raw_id, cluster))
    record = None if found is None else found.record
    if sacct is not None and record is not None and record.meta.job_id != sacct.job_id_raw:
        sacct = None  # the id matched another job in Slurm's numbering; do not mix them
    mirrored: MirrorRecord | None = None
    if sacct is not None and sacct.state not in UNFINISHED:
        record, mirrored = _with_accounting_record(slurm, record, sacct)
    if record is None:
        if sacct is not None and sacct.state in UNFINISHED:
            raise NotFoundError(f"job {job} is {sacct.state}: its GPU record is written when it ends")
        if sacct is not None:
            raise NotFoundError(
                f"job {job} has no GPU record: it used no GPU, or ran where slurmgpu's hooks are not installed"
            )
        if store_error is not None:
            raise store_error
        if slurm_error is None:
            raise NotFoundError(f"unknown job {job}: neither Slurm accounting nor the job store know it")
        raise NotFoundError(f"job {job} is not in the job store {path}")
    if not viewer.may_see(record.meta.user):
        raise _refuse(job, viewer)
    summary = summarize(record, sacct, config.thresholds, slurm_error, found.aggregates if found else ())
    if mirrored is not None:
        local_nodes = {g.node for g in record.gpus}
        groups = [g for p in mirrored.parts if p.summarised and p.node not in local_nodes for g in p.groups]
        if mirrored.collapsed is not None and not set(mirrored.collapsed.nodes) & local_nodes:
            groups.extend(mirrored.collapsed.groups)
        names = tuple(n for n in mirrored.summarised_nodes() if n not in local_nodes)
        summary = _add_summarised(summary, groups, names)
    return summary


def _add_summarised(summary: JobSummary, groups: list[ModelGroup], nodes: tuple[str, ...]) -> JobSummary:
    """Totals that include the GPUs a large job's AdminComment record keeps only as sums (no per-GPU rows)."""
    from slurmgpu.store.usage import UsageSums

    if not groups:
        return summary
    s = UsageSums.total(g.sums for g in groups)
    allocated = summary.gpu_hours_allocated + s.gpu_hours_allocated
    used = None if summary.gpu_hours_used is None else summary.gpu_hours_used + s.gpu_hours_used
    all_known = s.util_known_gpu_seconds >= s.gpu_seconds
    efficiency = (
        100.0 * used / allocated
        if used is not None and allocated > 0 and summary.gpu_efficiency_pct is not None and all_known
        else None
    )
    energy = (
        summary.energy_kwh + s.energy_kwh
        if summary.energy_kwh is not None and s.energy_known_gpu_seconds >= s.gpu_seconds
        else None
    )
    starts = [g.first_start_epoch_seconds for g in groups]
    ends = [g.last_end_epoch_seconds for g in groups]
    if summary.window_start_epoch_seconds is not None and summary.window_end_epoch_seconds is not None:
        starts.append(summary.window_start_epoch_seconds)
        ends.append(summary.window_end_epoch_seconds)
    window = max(ends) - min(starts)
    return replace(
        summary,
        nodes=tuple(sorted({*summary.nodes, *nodes})),
        gpus_allocated=summary.gpus_allocated + s.gpus,
        gpu_hours_allocated=allocated,
        gpu_hours_used=used,
        gpu_efficiency_pct=efficiency,
        energy_kwh=energy,
        average_power_watts=energy * 3.6e6 / window if energy is not None and window > 0 else None,
        window_start_epoch_seconds=min(starts),
        window_end_epoch_seconds=max(ends),
        hints=(
            *summary.hints,
            f"{s.gpus} GPU(s) on {len(nodes)} node(s) are kept only as totals in Slurm's accounting record "
            "(a large job): the totals include them, the table does not",
        ),
    )


def _with_accounting_record(
    slurm: Slurm, local: JobRecord | None, sacct: SacctJob
) -> tuple[JobRecord | None, MirrorRecord | None]:
    """The local record, completed from the job's AdminComment record with the nodes it lacks (all of them when
    there is no local record), and that AdminComment record. Only asks Slurm when something is missing."""
    from slurmgpu.slurm.hostlist import expand

    try:
        job_nodes = set(expand(sacct.node_list))
    except SlurmError:
        job_nodes = set()
    local_nodes = {g.node for g in local.gpus} if local is not None else set()
    if local is not None and job_nodes <= local_nodes:
        return local, None
    from slurmgpu.slurm.admincomment import read_record

    try:
        mirrored = read_record(slurm, sacct.job_id_raw)
    except SlurmgpuError:
        return local, None  # no or a damaged record in Slurm: what we have is all there is
    if mirrored is None or mirrored.job_id != sacct.job_id_raw:
        return local, None
    remote = mirrored.job_record()
    if local is None:
        return (remote, mirrored) if remote.gpus or mirrored.summarised_nodes() else (None, None)
    extra = tuple(g for g in remote.gpus if g.node not in local_nodes)
    merged = replace(local, gpus=tuple(sorted((*local.gpus, *extra), key=lambda g: (g.node, g.minor))))
    return merged, mirrored
