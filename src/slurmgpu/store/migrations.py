"""Schema migrations, applied in order; PRAGMA user_version records how many have run.

Only this module changes the schema. The steps describe tables the way sqlite-utils does (a dict of column types, a
primary key, the NOT NULL columns) through `_Db`, a few lines that write the same SQL sqlite-utils wrote for the
stores created before it was dropped: importing sqlite-utils cost the long-running agent 15 MiB of memory (it pulls
in click plugins, tabulate, dateutil and more) for a step that runs once per node.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

KEY = ("cluster", "job_id", "node", "minor")
_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL"}


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


class _Table:
    def __init__(self, conn: sqlite3.Connection, name: str) -> None:
        self.conn, self.name = conn, name

    def create(
        self,
        columns: dict[str, type],
        *,
        pk: str | tuple[str, ...],
        not_null: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        lines = []
        for column, kind in columns.items():
            if pk == column:  # a single integer key is SQLite's rowid
                lines.append(f'   "{column}" {_SQL_TYPES[kind]} PRIMARY KEY')
            else:
                lines.append(
                    f'   "{column}" {_SQL_TYPES[kind]}' + (" NOT NULL" if column in not_null else "")
                )
        if isinstance(pk, tuple):
            lines.append(f"   PRIMARY KEY ({_quoted(pk)})")
        body = ",\n".join(lines)
        self.conn.execute(f'CREATE TABLE "{self.name}" (\n{body}\n)')

    def create_index(self, columns: list[str]) -> None:
        index = f"idx_{self.name}_{'_'.join(columns)}"
        self.conn.execute(f'CREATE INDEX "{index}"\n    ON "{self.name}" ({_quoted(columns)})')


class _Db:
    """The part of sqlite_utils.Database the steps use: db[name].create(...), .create_index([...]), db.execute."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __getitem__(self, name: str) -> _Table:
        return _Table(self.conn, name)

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)


def _m1_initial(db: _Db) -> None:
    db["jobs"].create(
        {
            "cluster": str,
            "job_id": int,
            "user": str,
            "uid": int,
            "account": str,
            "partition": str,
            "array_job_id": int,
            "array_task_id": int,
            "het_job_id": int,
            "het_job_offset": int,
            "first_seen_epoch": float,
            "last_update_epoch": float,
        },
        pk=("cluster", "job_id"),
        not_null={"cluster", "job_id", "user", "first_seen_epoch", "last_update_epoch"},
    )
    db["jobs"].create_index(["array_job_id", "array_task_id"])
    db["jobs"].create_index(["het_job_id", "het_job_offset"])
    db["jobs"].create_index(["account", "first_seen_epoch"])
    db["jobs"].create_index(["user", "first_seen_epoch"])
    db["job_gpus"].create(
        {
            "cluster": str,
            "job_id": int,
            "node": str,
            "minor": int,
            "uuid": str,
            "model": str,
            "memory_total_bytes": int,
            "start_epoch": float,
            "end_epoch": float,
            "energy_joules": float,
            "utilization_mean_pct": float,
            "utilization_max_pct": float,
            "memory_peak_bytes": int,
            "memory_utilization_mean_pct": float,
            "source": str,
        },
        pk=KEY,
        not_null={"cluster", "job_id", "node", "minor", "start_epoch", "end_epoch", "source"},
    )
    db["baselines"].create(
        {
            "cluster": str,
            "job_id": int,
            "node": str,
            "minor": int,
            "uuid": str,
            "taken_epoch": float,
            "energy_joules": float,
            "ecc_volatile_uncorrected": int,
            "ecc_aggregate_uncorrected": int,
            "ecc_aggregate_corrected": int,
            "retired_pages": int,
            "remapped_rows_uncorrectable": int,
            "xid_count": int,
        },
        pk=KEY,
        not_null={"cluster", "job_id", "node", "minor", "taken_epoch"},
    )
    db["health_events"].create(
        {
            "id": int,
            "epoch": float,
            "cluster": str,
            "node": str,
            "minor": int,
            "job_id": int,
            "hook": str,
            "check_name": str,
            "severity": str,
            "detail": str,
        },
        pk="id",
        not_null={"epoch", "cluster", "node", "check_name", "severity", "detail"},
    )
    db["health_events"].create_index(["cluster", "node", "epoch"])
    db["drains"].create(
        {
            "id": int,
            "epoch": float,
            "cluster": str,
            "node": str,
            "action": str,
            "reason": str,
            "actor": str,
            "source": str,
            "job_id": int,
            "readings_json": str,
        },
        pk="id",
        not_null={"epoch", "cluster", "node", "action", "reason", "actor", "source"},
    )
    db["drains"].create_index(["cluster", "node", "epoch"])


def _m2_health_results(db: _Db) -> None:
    """The last health check of each node (what `slurmgpu nodes` shows and `slurmgpu resume` consults)."""
    db["health_results"].create(
        {
            "cluster": str,
            "node": str,
            "epoch": float,
            "source": str,
            "status": str,
            "summary": str,
            "results_json": str,
        },
        pk=("cluster", "node"),
        not_null={"cluster", "node", "epoch", "source", "status", "summary", "results_json"},
    )


def _m3_agent_aggregates(db: _Db) -> None:
    """The node agent's per-job, per-GPU aggregates and downsampled series (checkpoints, then the job's record)."""
    db["agent_aggregates"].create(
        {
            "cluster": str,
            "job_id": int,
            "node": str,
            "minor": int,
            "updated_epoch": float,
            "aggregate_json": str,
        },
        pk=KEY,
        not_null={"cluster", "job_id", "node", "minor", "updated_epoch", "aggregate_json"},
    )


# One job's usage per GPU model, summed from its job_gpus rows (store/usage.py is the same in Python). The idle
# threshold is the design's 5% (usage.ROLLUP_IDLE_PCT); reports with another threshold read job_gpus instead.
_WINDOW = "max(0.0, g.end_epoch - g.start_epoch)"
_MEMORY_KNOWN = "g.memory_peak_bytes IS NOT NULL AND g.memory_total_bytes > 0"
_ROLLUP_SELECT = f"""
    SELECT g.cluster, g.job_id, coalesce(g.model, ''), j.user, coalesce(j.account, ''), coalesce(j.partition, ''),
           j.first_seen_epoch,
           coalesce(g.model, '') = (SELECT min(coalesce(x.model, '')) FROM job_gpus x
                                    WHERE x.cluster = g.cluster AND x.job_id = g.job_id),
           count(*),
           total({_WINDOW}),
           total(g.utilization_mean_pct / 100.0 * {_WINDOW}),
           total(CASE WHEN g.utilization_mean_pct IS NOT NULL THEN {_WINDOW} END),
           total(CASE WHEN g.utilization_mean_pct < 5.0 THEN {_WINDOW} END),
           total(g.energy_joules),
           total(CASE WHEN g.energy_joules IS NOT NULL THEN {_WINDOW} END),
           total(CASE WHEN {_MEMORY_KNOWN} THEN 1.0 * g.memory_peak_bytes / g.memory_total_bytes * {_WINDOW} END),
           total(CASE WHEN {_MEMORY_KNOWN} THEN {_WINDOW} END)
    FROM job_gpus g JOIN jobs j ON j.cluster = g.cluster AND j.job_id = g.job_id"""  # noqa: S608 - fixed fragments
_ROLLUP_COLUMNS = """(cluster, job_id, model, user, account, partition, end_epoch, job_share, gpus, gpu_seconds,
    used_gpu_seconds, util_known_gpu_seconds, idle_gpu_seconds, energy_joules, energy_known_gpu_seconds,
    memory_fraction_gpu_seconds, memory_known_gpu_seconds)"""


def _rollup_job(row: str) -> str:
    """Trigger statements that recompute the rollup of the job of `row` (NEW or OLD) from scratch: idempotent, and
    right after INSERT OR REPLACE too (whose implicit delete fires no trigger)."""
    return f"""
        DELETE FROM job_usage WHERE cluster = {row}.cluster AND job_id = {row}.job_id;
        INSERT INTO job_usage {_ROLLUP_COLUMNS}
        {_ROLLUP_SELECT}
        WHERE g.cluster = {row}.cluster AND g.job_id = {row}.job_id
        GROUP BY coalesce(g.model, '');"""  # noqa: S608 - fixed fragments


def _m4_reports(db: _Db) -> None:
    """Reports: the per-job usage rollup `job_usage` (kept by triggers, filled from existing rows), its indexes, an
    index for time windows on `jobs`, and job notes (what mirroring into Slurm's AdminComment could not do)."""
    db.execute(
        """CREATE TABLE job_usage (
            cluster TEXT NOT NULL,
            job_id INTEGER NOT NULL,
            model TEXT NOT NULL,
            user TEXT NOT NULL,
            account TEXT NOT NULL,
            partition TEXT NOT NULL,
            end_epoch FLOAT NOT NULL,
            job_share INTEGER NOT NULL,
            gpus INTEGER NOT NULL,
            gpu_seconds FLOAT NOT NULL,
            used_gpu_seconds FLOAT NOT NULL,
            util_known_gpu_seconds FLOAT NOT NULL,
            idle_gpu_seconds FLOAT NOT NULL,
            energy_joules FLOAT NOT NULL,
            energy_known_gpu_seconds FLOAT NOT NULL,
            memory_fraction_gpu_seconds FLOAT NOT NULL,
            memory_known_gpu_seconds FLOAT NOT NULL,
            PRIMARY KEY (cluster, job_id, model)
        )"""
    )
    db.execute(
        f"INSERT INTO job_usage {_ROLLUP_COLUMNS} {_ROLLUP_SELECT} GROUP BY g.cluster, g.job_id, coalesce(g.model, '')"
    )
    for columns in (["end_epoch"], ["account", "end_epoch"], ["user", "end_epoch"]):
        db["job_usage"].create_index(columns)
    db.execute(f"CREATE TRIGGER job_usage_gpu_insert AFTER INSERT ON job_gpus BEGIN {_rollup_job('NEW')} END")
    db.execute(
        "CREATE TRIGGER job_usage_gpu_update AFTER UPDATE ON job_gpus BEGIN "
        f"{_rollup_job('OLD')} {_rollup_job('NEW')} END"
    )
    db.execute(f"CREATE TRIGGER job_usage_gpu_delete AFTER DELETE ON job_gpus BEGIN {_rollup_job('OLD')} END")
    db.execute(
        """CREATE TRIGGER job_usage_job_update AFTER UPDATE OF user, account, partition, first_seen_epoch ON jobs
           BEGIN
               UPDATE job_usage SET user = NEW.user, account = coalesce(NEW.account, ''),
                   partition = coalesce(NEW.partition, ''), end_epoch = NEW.first_seen_epoch
               WHERE cluster = NEW.cluster AND job_id = NEW.job_id;
           END"""
    )
    db.execute(
        """CREATE TRIGGER job_usage_job_delete AFTER DELETE ON jobs
           BEGIN DELETE FROM job_usage WHERE cluster = OLD.cluster AND job_id = OLD.job_id; END"""
    )
    db["jobs"].create_index(["first_seen_epoch"])
    db["job_notes"].create(
        {
            "id": int,
            "epoch": float,
            "cluster": str,
            "job_id": int,
            "node": str,
            "kind": str,
            "detail": str,
        },
        pk="id",
        not_null={"epoch", "cluster", "job_id", "node", "kind", "detail"},
    )
    db["job_notes"].create_index(["cluster", "job_id"])


def _m5_dcgm_job_stats(db: _Db) -> None:
    """DCGM's own statistics of a job, per GPU, when dcgmi is installed (parsed `dcgmi stats -v -j`)."""
    db["job_dcgm_stats"].create(
        {"cluster": str, "job_id": int, "node": str, "minor": int, "stats_json": str},
        pk=KEY,
        not_null={"cluster", "job_id", "node", "minor", "stats_json"},
    )


MIGRATIONS: list[Callable[[_Db], None]] = [
    _m1_initial,
    _m2_health_results,
    _m3_agent_aggregates,
    _m4_reports,
    _m5_dcgm_job_stats,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION inside one transaction per step; returns the version reached."""
    db = _Db(conn)
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        from slurmgpu.errors import StoreError

        raise StoreError(f"database schema version {version} is newer than this slurmgpu ({SCHEMA_VERSION})")
    for step in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) > step:
                conn.execute("ROLLBACK")
                continue
            MIGRATIONS[step](db)
            conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
