"""Report queries over the store: usage per group and the most wasteful jobs, in one or two SQL statements.

With the design's idle threshold (5%) they read the `job_usage` rollup (one row per job and GPU model, kept by
triggers); with another threshold they compute the same rows from `jobs` and `job_gpus` on the fly (slower, same
result). Grouping keys come from a fixed table, values are always bound parameters.

`cells()` returns sums per (group key, partition, GPU model): the partition and model are kept so that the caller can
price each cell with the rate card. The same grouping over `JobUsage` values built elsewhere (Slurm accounting) is
`cells_from_usages()`, so both sources go through one aggregation.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from slurmgpu.errors import InputError
from slurmgpu.store.db import Store
from slurmgpu.store.usage import ROLLUP_IDLE_PCT, JobUsage, UsageSums

GROUP_KEYS = ("user", "account", "partition", "gpu-model", "day")
_KEY_SQL = {
    "user": "user",
    "account": "account",
    "partition": "partition",
    "gpu-model": "model",
    "day": "date(end_epoch, 'unixepoch', 'localtime')",
}
SUM_FIELDS = tuple(f.name for f in fields(UsageSums))  # also the column names of job_usage
_SUMS_SQL = ", ".join(f"total({name})" for name in SUM_FIELDS)

_WINDOW = "max(0.0, g.end_epoch - g.start_epoch)"
_MEMORY_KNOWN = "g.memory_peak_bytes IS NOT NULL AND g.memory_total_bytes > 0"
# job_usage's rows computed on the fly, for an idle threshold other than the rollup's (:idle_pct).
_RAW_USAGE = f"""
    SELECT g.cluster AS cluster, g.job_id AS job_id, coalesce(g.model, '') AS model, j.user AS user,
           coalesce(j.account, '') AS account, coalesce(j.partition, '') AS partition,
           j.first_seen_epoch AS end_epoch,
           coalesce(g.model, '') = (SELECT min(coalesce(x.model, '')) FROM job_gpus x
                                    WHERE x.cluster = g.cluster AND x.job_id = g.job_id) AS job_share,
           count(*) AS gpus,
           total({_WINDOW}) AS gpu_seconds,
           total(g.utilization_mean_pct / 100.0 * {_WINDOW}) AS used_gpu_seconds,
           total(CASE WHEN g.utilization_mean_pct IS NOT NULL THEN {_WINDOW} END) AS util_known_gpu_seconds,
           total(CASE WHEN g.utilization_mean_pct < :idle_pct THEN {_WINDOW} END) AS idle_gpu_seconds,
           total(g.energy_joules) AS energy_joules,
           total(CASE WHEN g.energy_joules IS NOT NULL THEN {_WINDOW} END) AS energy_known_gpu_seconds,
           total(CASE WHEN {_MEMORY_KNOWN} THEN 1.0 * g.memory_peak_bytes / g.memory_total_bytes * {_WINDOW} END)
               AS memory_fraction_gpu_seconds,
           total(CASE WHEN {_MEMORY_KNOWN} THEN {_WINDOW} END) AS memory_known_gpu_seconds
    FROM jobs j JOIN job_gpus g ON g.cluster = j.cluster AND g.job_id = j.job_id
    WHERE {{where}}
    GROUP BY g.cluster, g.job_id, coalesce(g.model, '')"""  # noqa: S608 - fixed fragments


@dataclass(frozen=True)
class ReportFilter:
    """Which jobs: those whose GPU record ended in [since, until), optionally of one cluster, account, user,
    partition (None: any)."""

    since_epoch: float
    until_epoch: float
    cluster: str = ""
    account: str | None = None
    user: str | None = None
    partition: str | None = None


@dataclass(frozen=True)
class Cell:
    """Usage of one group key within one partition and GPU model."""

    key: tuple[str, ...]
    partition: str
    model: str
    jobs: int  # jobs, counted once each (sum of job_share)
    job_models: int  # (job, GPU model) pairs: the job count when grouping by GPU model
    jobs_without_telemetry: int
    sums: UsageSums


@dataclass(frozen=True)
class TopJob:
    cluster: str
    job_id: int
    display_id: str
    user: str
    account: str
    partition: str
    end_epoch_seconds: float
    sums: UsageSums


def check_keys(by: Iterable[str]) -> tuple[str, ...]:
    keys = tuple(by)
    for key in keys:
        if key not in GROUP_KEYS:
            raise InputError(f"cannot group by {key!r}: use one of {', '.join(GROUP_KEYS)}")
    return keys


def _where(f: ReportFilter, prefix: str, time_column: str) -> tuple[str, dict[str, Any]]:
    clauses = [f"{prefix}{time_column} >= :since", f"{prefix}{time_column} < :until"]
    args: dict[str, Any] = {"since": f.since_epoch, "until": f.until_epoch}
    for name, value in (
        ("cluster", f.cluster or None),
        ("account", f.account),
        ("user", f.user),
        ("partition", f.partition),
    ):
        if value is not None:
            clauses.append(f"{prefix}{name} = :{name}")
            args[name] = value
    return " AND ".join(clauses), args


def _rollup_index(f: ReportFilter) -> str:
    """The rollup index for the filter. Named explicitly: with ANALYZE statistics SQLite may prefer a skip-scan of
    the (user, end) index for a pure time window, which is 1.5x slower than the range scan of the (end) index."""
    if f.user is not None:
        return "idx_job_usage_user_end_epoch"
    if f.account is not None:
        return "idx_job_usage_account_end_epoch"
    return "idx_job_usage_end_epoch"


def _source(f: ReportFilter, idle_pct: float) -> tuple[str, str, dict[str, Any]]:
    """(FROM clause, WHERE clause, parameters): the rollup, or the same rows computed with another threshold."""
    if idle_pct == ROLLUP_IDLE_PCT:
        where, args = _where(f, "", "end_epoch")
        return f"job_usage INDEXED BY {_rollup_index(f)}", where, args
    where, args = _where(f, "j.", "first_seen_epoch")
    args["idle_pct"] = idle_pct
    return f"({_RAW_USAGE.format(where=where)})", "1", args


def _sums(row: tuple[Any, ...]) -> UsageSums:
    values = list(row)
    values[0] = int(values[0])
    return UsageSums(*values)


def cells(store: Store, f: ReportFilter, by: tuple[str, ...], idle_pct: float) -> list[Cell]:
    keys = check_keys(by)
    source, where, args = _source(f, idle_pct)
    key_sql = ", ".join(_KEY_SQL[k] for k in keys)
    group = f"{key_sql}, " if keys else ""
    sql = f"""SELECT {group}partition, model, total(job_share), count(*), {_SUMS_SQL}
              FROM {source} WHERE {where} GROUP BY {group}partition, model"""  # noqa: S608 - fixed fragments
    out = []
    n = len(keys)
    for row in store.conn.execute(sql, args):
        out.append(
            Cell(
                key=tuple("" if v is None else str(v) for v in row[:n]),
                partition=row[n],
                model=row[n + 1],
                jobs=int(row[n + 2]),
                job_models=int(row[n + 3]),
                jobs_without_telemetry=0,
                sums=_sums(row[n + 4 :]),
            )
        )
    return out


def top_jobs(store: Store, f: ReportFilter, idle_pct: float, limit: int) -> list[TopJob]:
    """The jobs with the most unused GPU-hours (allocated minus used, where utilization is known)."""
    if limit <= 0:
        return []
    source, where, args = _source(f, idle_pct)
    if idle_pct == ROLLUP_IDLE_PCT:
        candidates = _top_candidates(store, source, where, args, limit)
        if not candidates:
            return []
        args = {**args, "candidates": json.dumps(candidates)}
        where += (
            " AND (cluster, job_id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')"
            " FROM json_each(:candidates))"
        )
        source = "job_usage"
    args["limit"] = limit
    sql = f"""SELECT cluster, job_id, user, account, partition, max(end_epoch), {_SUMS_SQL}
              FROM {source} WHERE {where}
              GROUP BY cluster, job_id
              HAVING total(util_known_gpu_seconds) > total(used_gpu_seconds)
              ORDER BY total(util_known_gpu_seconds) - total(used_gpu_seconds) DESC, cluster, job_id
              LIMIT :limit"""  # noqa: S608 - fixed fragments
    rows = store.conn.execute(sql, args).fetchall()
    out = []
    for r in rows:
        meta = store.conn.execute(
            """SELECT array_job_id, array_task_id, het_job_id, het_job_offset FROM jobs
               WHERE cluster = ? AND job_id = ?""",
            (r[0], r[1]),
        ).fetchone()
        out.append(TopJob(r[0], r[1], _display_id(r[1], meta), r[2], r[3], r[4], r[5], _sums(r[6:])))
    return out


def _top_candidates(
    store: Store, source: str, where: str, args: dict[str, Any], limit: int
) -> list[tuple[str, int]]:
    """Jobs that can be among the `limit` most wasteful, without grouping every row of the window by job (that
    sorts them all). A job with one GPU model has one rollup row, which wastes what the job wastes; so the `limit`
    most wasteful of those jobs are among the rows with the most waste once as many rows are added as the jobs with
    several models have. Those jobs (the ones with a job_share 0 row) are candidates anyway."""
    shared = store.conn.execute(
        f"SELECT cluster, job_id FROM {source} WHERE {where} AND job_share = 0",  # noqa: S608 - fixed fragments
        args,
    ).fetchall()
    multi = {(str(c), int(j)) for c, j in shared}
    rows = store.conn.execute(
        f"""SELECT cluster, job_id FROM {source} WHERE {where}
            ORDER BY util_known_gpu_seconds - used_gpu_seconds DESC, cluster, job_id
            LIMIT :n""",  # noqa: S608 - fixed fragments
        {**args, "n": limit + len(shared) + len(multi)},
    ).fetchall()
    return sorted(multi | {(str(c), int(j)) for c, j in rows})


def _display_id(job_id: int, meta: tuple[Any, ...] | None) -> str:
    if meta is not None:
        array_job, array_task, het_job, het_offset = meta
        if array_job is not None and array_task is not None:
            return f"{array_job}_{array_task}"
        if het_job is not None and het_offset is not None:
            return f"{het_job}+{het_offset}"
    return str(job_id)


# -- the same over JobUsage values (Slurm accounting as the source) ----------------------------------------------


def usage_key(u: JobUsage, key: str) -> str:
    if key == "day":
        return time.strftime("%Y-%m-%d", time.localtime(u.end_epoch_seconds))
    if key == "gpu-model":
        return u.model
    return str(getattr(u, key))


def cells_from_usages(usages: Iterable[JobUsage], by: tuple[str, ...]) -> list[Cell]:
    keys = check_keys(by)
    acc: dict[tuple[tuple[str, ...], str, str], list[Any]] = {}
    for u in usages:
        cell_key = (tuple(usage_key(u, k) for k in keys), u.partition, u.model)
        slot = acc.setdefault(cell_key, [0, 0, 0, UsageSums()])
        slot[0] += u.job_share
        slot[1] += 1
        slot[2] += 0 if u.telemetry else u.job_share
        slot[3] = slot[3] + u.sums
    return [
        Cell(key, partition, model, jobs, job_models, blind, sums)
        for (key, partition, model), (jobs, job_models, blind, sums) in acc.items()
    ]


def top_jobs_from_usages(usages: Iterable[JobUsage], limit: int) -> list[TopJob]:
    per_job: dict[tuple[str, int], TopJob] = {}
    for u in usages:
        prev = per_job.get((u.cluster, u.job_id))
        per_job[(u.cluster, u.job_id)] = TopJob(
            u.cluster,
            u.job_id,
            u.job_display_id or str(u.job_id),
            u.user,
            u.account,
            u.partition,
            u.end_epoch_seconds if prev is None else max(prev.end_epoch_seconds, u.end_epoch_seconds),
            u.sums if prev is None else prev.sums + u.sums,
        )
    wasteful = [j for j in per_job.values() if j.sums.util_known_gpu_seconds > j.sums.used_gpu_seconds]
    return heapq.nsmallest(
        max(0, limit),
        wasteful,
        key=lambda j: (-(j.sums.util_known_gpu_seconds - j.sums.used_gpu_seconds), j.cluster, j.job_id),
    )
