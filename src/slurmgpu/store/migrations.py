"""Schema migrations, applied in order; PRAGMA user_version records how many have run.

Only this module changes the schema. It imports sqlite-utils, which is slow to import (about 0.1 s), so the hooks
load it only when the database is behind (once per node after an install or upgrade).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

KEY = ("cluster", "job_id", "node", "minor")


def _m1_initial(db: Any) -> None:
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


def _m2_health_results(db: Any) -> None:
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


def _m3_agent_aggregates(db: Any) -> None:
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


MIGRATIONS: list[Callable[[Any], None]] = [_m1_initial, _m2_health_results, _m3_agent_aggregates]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION inside one transaction per step; returns the version reached."""
    import sqlite_utils

    db = sqlite_utils.Database(conn)
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
