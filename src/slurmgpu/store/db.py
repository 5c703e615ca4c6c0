"""The job store: one SQLite file, WAL, busy timeout, parameterised SQL, idempotent writes.

Hot paths (hooks, `slurmgpu job`) use the sqlite3 module directly; the schema is owned by `migrations`.
Writes are keyed by (cluster, job id, node, GPU minor): re-running an epilog replaces its rows, never adds to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from slurmgpu.collection.aggregate import JobGpuAggregate, encode_checkpoint
from slurmgpu.errors import NotFoundError, StoreError
from slurmgpu.health.results import CheckResult, worst_status
from slurmgpu.slurm.env import JobContext
from slurmgpu.slurm.jobid import JobId
from slurmgpu.store.records import Baseline, JobGpuUsage, JobMeta, JobRecord

BUSY_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Store:
        """Open (and for writers create and migrate) the store. Errors become one-line StoreErrors."""
        from slurmgpu.store.migrations import SCHEMA_VERSION, migrate

        try:
            if readonly:
                if not path.exists():
                    raise StoreError(f"no job store at {path} (no job has finished on this node yet?)")
                conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
                )
            else:
                _ensure_dir(path.parent)
                fresh = not path.exists()
                conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
                if fresh:
                    with contextlib.suppress(OSError):
                        os.chmod(path, 0o644)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version != SCHEMA_VERSION:
                if readonly and os.access(path, os.W_OK):
                    conn.close()  # root (or the owner) may migrate: reopen for writing
                    return cls.open(path)
                if readonly:
                    raise StoreError(
                        f"job store {path} has schema {version}, expected {SCHEMA_VERSION}: "
                        "the next epilog, or any slurmgpu command run as root, migrates it"
                    )
                migrate(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"job store {path}: {exc}") from None
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"job store {self.path}: {exc}") from None
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # -- writes ------------------------------------------------------------------------------------------------

    def _upsert_job(self, c: sqlite3.Connection, ctx: JobContext, now: float) -> None:
        c.execute(
            """INSERT INTO jobs (cluster, job_id, user, uid, account, partition, array_job_id, array_task_id,
                   het_job_id, het_job_offset, first_seen_epoch, last_update_epoch)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (cluster, job_id) DO UPDATE SET
                   user=excluded.user, uid=excluded.uid, account=excluded.account,
                   partition=excluded.partition, array_job_id=excluded.array_job_id,
                   array_task_id=excluded.array_task_id, het_job_id=excluded.het_job_id,
                   het_job_offset=excluded.het_job_offset,
                   first_seen_epoch=min(jobs.first_seen_epoch, excluded.first_seen_epoch),
                   last_update_epoch=max(jobs.last_update_epoch, excluded.last_update_epoch)""",
            (
                ctx.cluster,
                ctx.job_id,
                ctx.user,
                ctx.uid,
                ctx.account,
                ctx.partition,
                ctx.array_job_id,
                ctx.array_task_id,
                ctx.het_job_id,
                ctx.het_job_offset,
                now,
                now,
            ),
        )

    def save_job(
        self, ctx: JobContext, baselines: list[Baseline], usage: list[JobGpuUsage], now: float
    ) -> None:
        """One node's part of a job: its metadata, the prolog's baselines and the usage rows, in one transaction.
        Keyed by (cluster, job id, node, GPU): writing the same part again replaces it."""
        with self.transaction() as c:
            self._upsert_job(c, ctx, now)
            c.executemany(
                """INSERT OR REPLACE INTO baselines (cluster, job_id, node, minor, uuid, taken_epoch, energy_joules,
                       ecc_volatile_uncorrected, ecc_aggregate_uncorrected, ecc_aggregate_corrected, retired_pages,
                       remapped_rows_uncorrectable, xid_count)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    (
                        ctx.cluster,
                        ctx.job_id,
                        ctx.node,
                        b.minor,
                        b.uuid,
                        b.taken_epoch_seconds,
                        b.energy_joules,
                        b.ecc_volatile_uncorrected,
                        b.ecc_aggregate_uncorrected,
                        b.ecc_aggregate_corrected,
                        b.retired_pages,
                        b.remapped_rows_uncorrectable,
                        b.xid_count,
                    )
                    for b in baselines
                ],
            )
            c.executemany(
                """INSERT OR REPLACE INTO job_gpus (cluster, job_id, node, minor, uuid, model, memory_total_bytes,
                       start_epoch, end_epoch, energy_joules, utilization_mean_pct, utilization_max_pct,
                       memory_peak_bytes, memory_utilization_mean_pct, source)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    (
                        ctx.cluster,
                        ctx.job_id,
                        u.node,
                        u.minor,
                        u.uuid,
                        u.model,
                        u.memory_total_bytes,
                        u.start_epoch_seconds,
                        u.end_epoch_seconds,
                        u.energy_joules,
                        u.utilization_mean_pct,
                        u.utilization_max_pct,
                        u.memory_peak_bytes,
                        u.memory_utilization_mean_pct,
                        u.source,
                    )
                    for u in usage
                ],
            )

    def save_health(
        self,
        *,
        cluster: str,
        node: str,
        source: str,
        job_id: int | None,
        results: list[CheckResult],
        now: float,
        update_last: bool = True,
    ) -> None:
        """The node's latest health result (unless update_last is off), and an event per warning and failure."""
        status = worst_status(results)
        bad = [r for r in results if r.status != "ok"]
        summary = "; ".join(f"{r.check} {r.where}: {r.detail}" for r in bad[:5]) or "all checks passed"
        with self.transaction() as c:
            if update_last:
                c.execute(
                    """INSERT OR REPLACE INTO health_results (cluster, node, epoch, source, status, summary, results_json)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    (cluster, node, now, source, status, summary, json.dumps([r.__dict__ for r in results])),
                )
            c.executemany(
                """INSERT INTO health_events (epoch, cluster, node, minor, job_id, hook, check_name, severity, detail)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(now, cluster, node, r.minor, job_id, source, r.check, r.status, r.detail) for r in bad],
            )

    def last_health(self, cluster: str, node: str) -> dict[str, Any] | None:
        cur = self.conn.execute(
            "SELECT * FROM health_results WHERE cluster = ? AND node = ?", (cluster, node)
        )
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def save_aggregates(
        self,
        cluster: str,
        aggregates: list[JobGpuAggregate],
        now: float,
        encode: Callable[[JobGpuAggregate], str] = encode_checkpoint,
    ) -> None:
        """Insert or replace each aggregate's row; `encode` makes its JSON (the agent passes a CheckpointEncoder's,
        which re-uses the text of series it has already encoded)."""
        with self.transaction() as c:
            c.executemany(
                """INSERT OR REPLACE INTO agent_aggregates (cluster, job_id, node, minor, updated_epoch, aggregate_json)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                [(cluster, a.job_id, a.node, a.minor, now, encode(a)) for a in aggregates],
            )

    def load_aggregates(
        self, cluster: str, node: str, job_ids: list[int] | None = None
    ) -> list[JobGpuAggregate]:
        sql = "SELECT aggregate_json FROM agent_aggregates WHERE cluster = ? AND node = ?"
        args: list[Any] = [cluster, node]
        if job_ids is not None:
            if not job_ids:
                return []
            sql += f" AND job_id IN ({', '.join('?' for _ in job_ids)})"
            args += job_ids
        return [JobGpuAggregate.from_json(json.loads(r[0])) for r in self.conn.execute(sql, args).fetchall()]

    def job_aggregates(self, cluster: str, job_id: int) -> list[JobGpuAggregate]:
        rows = self.conn.execute(
            "SELECT aggregate_json FROM agent_aggregates WHERE cluster = ? AND job_id = ? "
            "ORDER BY node, minor",
            (cluster, job_id),
        ).fetchall()
        return [JobGpuAggregate.from_json(json.loads(r[0])) for r in rows]

    def save_dcgm_stats(self, ctx: JobContext, per_minor: dict[int, dict[str, Any]]) -> None:
        with self.transaction() as c:
            c.executemany(
                """INSERT OR REPLACE INTO job_dcgm_stats (cluster, job_id, node, minor, stats_json)
                   VALUES (?, ?, ?, ?, ?)""",
                [
                    (ctx.cluster, ctx.job_id, ctx.node, minor, json.dumps(stats, sort_keys=True))
                    for minor, stats in per_minor.items()
                ],
            )

    def dcgm_stats(self, cluster: str, job_id: int) -> dict[tuple[str, int], dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT node, minor, stats_json FROM job_dcgm_stats WHERE cluster = ? AND job_id = ?",
            (cluster, job_id),
        ).fetchall()
        return {(r[0], int(r[1])): json.loads(r[2]) for r in rows}

    def usage_recorded(self, cluster: str, job_id: int, node: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM job_gpus WHERE cluster = ? AND job_id = ? AND node = ? LIMIT 1",
            (cluster, job_id, node),
        ).fetchone()
        return row is not None

    def record_health_event(
        self,
        *,
        cluster: str,
        node: str,
        minor: int | None,
        job_id: int | None,
        hook: str,
        check_name: str,
        severity: str,
        detail: str,
        now: float | None = None,
    ) -> None:
        with self.transaction() as c:
            c.execute(
                """INSERT INTO health_events (epoch, cluster, node, minor, job_id, hook, check_name, severity, detail)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (now or time.time(), cluster, node, minor, job_id, hook, check_name, severity, detail),
            )

    def record_drain(
        self,
        *,
        cluster: str,
        node: str,
        action: str,
        reason: str,
        actor: str,
        source: str,
        job_id: int | None,
        readings: Any,
        now: float | None = None,
    ) -> None:
        with self.transaction() as c:
            c.execute(
                """INSERT INTO drains (epoch, cluster, node, action, reason, actor, source, job_id, readings_json)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    now or time.time(),
                    cluster,
                    node,
                    action,
                    reason,
                    actor,
                    source,
                    job_id,
                    json.dumps(readings, sort_keys=True, default=str),
                ),
            )

    # -- reads -------------------------------------------------------------------------------------------------

    def load_baselines(self, cluster: str, job_id: int, node: str) -> dict[int, Baseline]:
        rows = self.conn.execute(
            """SELECT minor, uuid, taken_epoch, energy_joules, ecc_volatile_uncorrected, ecc_aggregate_uncorrected,
                      ecc_aggregate_corrected, retired_pages, remapped_rows_uncorrectable, xid_count
               FROM baselines WHERE cluster = ? AND job_id = ? AND node = ?""",
            (cluster, job_id, node),
        ).fetchall()
        return {r[0]: Baseline(*r) for r in rows}

    def resolve_job(self, job: JobId, cluster: str = "") -> tuple[str, int]:
        """(cluster, raw job id) for what the user typed; NotFoundError when the store does not know it."""
        where, args = _job_where(job)
        if cluster:
            where += " AND cluster = ?"
            args.append(cluster)
        rows = self.conn.execute(f"SELECT cluster, job_id FROM jobs WHERE {where} LIMIT 3", args).fetchall()  # noqa: S608 - fixed fragments
        if not rows:
            raise NotFoundError(f"job {job} is not in the job store {self.path}")
        if len(rows) > 1:
            clusters = ", ".join(sorted({r[0] for r in rows}))
            raise NotFoundError(f"job {job} exists in several clusters ({clusters}): pass --cluster")
        return str(rows[0][0]), int(rows[0][1])

    def job(self, cluster: str, job_id: int) -> JobRecord | None:
        meta = self.conn.execute(
            """SELECT cluster, job_id, user, uid, account, partition, array_job_id, array_task_id, het_job_id,
                      het_job_offset, first_seen_epoch, last_update_epoch
               FROM jobs WHERE cluster = ? AND job_id = ?""",
            (cluster, job_id),
        ).fetchone()
        if meta is None:
            return None
        rows = self.conn.execute(
            """SELECT node, minor, uuid, model, memory_total_bytes, start_epoch, end_epoch, energy_joules,
                      utilization_mean_pct, utilization_max_pct, memory_peak_bytes, memory_utilization_mean_pct,
                      source
               FROM job_gpus WHERE cluster = ? AND job_id = ? ORDER BY node, minor""",
            (cluster, job_id),
        ).fetchall()
        return JobRecord(meta=JobMeta(*meta), gpus=tuple(JobGpuUsage(*r) for r in rows))

    def health_events(self, cluster: str, node: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM health_events WHERE cluster = ?"
        args: list[Any] = [cluster]
        if node:
            sql += " AND node = ?"
            args.append(node)
        cur = self.conn.execute(sql + " ORDER BY epoch", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def drains(self, cluster: str) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM drains WHERE cluster = ? ORDER BY epoch", (cluster,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- any user: reading without write access, job notes -------------------------------------------------------

    # Set by open_reader when the file was opened as immutable: (inode, size, mtime) at opening.
    immutable_signature: tuple[int, int, int] | None = None

    @classmethod
    def open_reader(cls, path: Path) -> Store:
        """Open read-only as any user (users run reports and `slurmgpu job` on their own jobs).

        SQLite opens a WAL database read-only only when its -wal and -shm files exist or can be created. Root's
        writers remove them when the last connection closes, and users cannot create them in the 0755 state
        directory. Then no write-ahead log exists, so the main file holds every committed transaction: it is opened
        as immutable (no locks, no -shm), and `unchanged_since_open()` tells whether a writer touched it meanwhile
        (a checkpoint rewrites the main file); callers read again when it did (see store/queries.read_consistently).
        """
        if not path.exists():
            raise StoreError(f"no job store at {path} (no job has finished on this node yet?)")
        wal = path.with_name(path.name + "-wal")
        if os.access(path.parent, os.W_OK) or wal.exists():
            try:
                return cls.open(path, readonly=True)
            except StoreError as exc:
                if "readonly" not in str(exc) and "unable to open" not in str(exc):
                    raise  # the -wal went away between the check and the opening: read it as immutable
        from urllib.parse import quote

        from slurmgpu.store.migrations import SCHEMA_VERSION

        signature = _file_signature(path)
        try:
            conn = sqlite3.connect(
                f"file:{quote(str(path))}?immutable=1",
                uri=True,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
            )
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"job store {path}: {exc}") from None
        if version != SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"job store {path} has schema {version}, expected {SCHEMA_VERSION}: "
                "the next epilog, or any slurmgpu command run as root, migrates it"
            )
        store = cls(conn, path)
        store.immutable_signature = signature
        return store

    def unchanged_since_open(self) -> bool:
        """False when the store was opened as immutable and a writer has changed the file since."""
        if self.immutable_signature is None:
            return True
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            return not wal.exists() and _file_signature(self.path) == self.immutable_signature
        except OSError:
            return False

    def add_job_note(
        self, *, cluster: str, job_id: int, node: str, kind: str, detail: str, now: float | None = None
    ) -> None:
        """Something about a job worth keeping that is not usage: for example that its AdminComment held another
        tool's content, so the job's record was not mirrored there."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO job_notes (epoch, cluster, job_id, node, kind, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (now or time.time(), cluster, job_id, node, kind, detail),
            )

    def job_notes(self, cluster: str, job_id: int) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT epoch, node, kind, detail FROM job_notes WHERE cluster = ? AND job_id = ? ORDER BY epoch, id",
            (cluster, job_id),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def read_consistently(path: Path, read: Callable[[Store], T], attempts: int = 3) -> T:
    """Run `read` on the store opened for any user (Store.open_reader); read again if a writer changed a store
    opened as immutable meanwhile."""
    for _ in range(attempts):
        store = Store.open_reader(path)
        try:
            result = read(store)
            if store.unchanged_since_open():
                return result
        finally:
            store.close()
        time.sleep(0.05)
    raise StoreError(f"job store {path} kept changing while being read; try again")


def _file_signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _job_where(job: JobId) -> tuple[str, list[Any]]:
    if job.array_task is not None:
        return "array_job_id = ? AND array_task_id = ?", [job.base, job.array_task]
    if job.het_offset is not None:
        return "het_job_id = ? AND het_job_offset = ?", [job.base, job.het_offset]
    return "job_id = ?", [job.base]


def _ensure_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o755)  # noqa: S103 - users read their jobs; nothing secret is written here
