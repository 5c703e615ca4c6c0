"""The job store: schema after all migrations, idempotent writes, concurrent writers, read-only opening."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from slurmgpu.errors import NotFoundError, StoreError
from slurmgpu.slurm.env import JobContext
from slurmgpu.slurm.jobid import parse_job_id
from slurmgpu.store.db import Store
from slurmgpu.store.migrations import SCHEMA_VERSION
from slurmgpu.store.records import Baseline, JobGpuUsage


def ctx(job_id: int = 10, node: str = "gn1", **kw: object) -> JobContext:
    base = dict(
        job_id=job_id,
        node=node,
        cluster="c",
        user="alice",
        uid=1001,
        account="ml-team",
        partition="gpu",
        gpus=(0, 1),
    )
    base.update(kw)
    return JobContext(**base)  # type: ignore[arg-type]


def usage(node: str, minor: int, energy: float = 100.0) -> JobGpuUsage:
    return JobGpuUsage(
        node=node,
        minor=minor,
        uuid=f"GPU-{minor}",
        model="NVIDIA H100 80GB HBM3",
        memory_total_bytes=80 << 30,
        start_epoch_seconds=1000.0,
        end_epoch_seconds=1100.0,
        energy_joules=energy,
        utilization_mean_pct=50.0,
        utilization_max_pct=80.0,
        memory_peak_bytes=1 << 30,
        memory_utilization_mean_pct=30.0,
        source="nvml-accounting",
    )


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _pks(conn: sqlite3.Connection, table: str) -> list[str]:
    rows = conn.execute(f"PRAGMA table_info({table})").fetchall()  # (cid, name, type, notnull, default, pk)
    return [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]


def test_schema_after_all_migrations(tmp_path: Path) -> None:
    Store.open(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert _tables(conn) == {
        "jobs",
        "job_gpus",
        "baselines",
        "health_events",
        "drains",
        "health_results",
        "agent_aggregates",
        "job_dcgm_stats",
        "job_usage",
        "job_notes",
    }
    assert _pks(conn, "health_results") == ["cluster", "node"]
    assert _pks(conn, "job_gpus") == ["cluster", "job_id", "node", "minor"]
    assert _pks(conn, "baselines") == ["cluster", "job_id", "node", "minor"]
    assert _pks(conn, "jobs") == ["cluster", "job_id"]
    assert _pks(conn, "health_events") == ["id"]
    columns = {r[1]: (r[2], r[3]) for r in conn.execute("PRAGMA table_info(job_gpus)")}
    assert columns["energy_joules"] == ("REAL", 0) and columns["source"] == ("TEXT", 1)
    assert columns["memory_peak_bytes"] == ("INTEGER", 0)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rewriting_an_epilog_never_double_counts(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    for _ in range(3):
        store.save_job(ctx(), [], [usage("gn1", 0), usage("gn1", 1)], time.time())
    store.save_job(ctx(node="gn2"), [], [usage("gn2", 0)], time.time())
    record = store.job("c", 10)
    assert record is not None
    assert [(g.node, g.minor) for g in record.gpus] == [("gn1", 0), ("gn1", 1), ("gn2", 0)]
    assert sum(g.energy_joules or 0 for g in record.gpus) == 300.0


def test_baselines_round_trip(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    b = Baseline(0, "GPU-0", 1000.5, 123.25, 0, 1, 2, None, 0, 3)
    store.save_job(ctx(), [b], [], time.time())
    assert store.load_baselines("c", 10, "gn1") == {0: b}
    assert store.load_baselines("c", 10, "gn2") == {}


def test_array_and_het_ids_resolve(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.save_job(ctx(20, array_job_id=15, array_task_id=4), [], [usage("gn1", 0)], time.time())
    store.save_job(ctx(31, het_job_id=30, het_job_offset=1), [], [usage("gn1", 1)], time.time())
    assert store.resolve_job(parse_job_id("15_4")) == ("c", 20)
    assert store.resolve_job(parse_job_id("30+1")) == ("c", 31)
    assert store.resolve_job(parse_job_id("20")) == ("c", 20)
    with pytest.raises(NotFoundError):
        store.resolve_job(parse_job_id("15_5"))


def _writer(path: str, job_id: int, node: str) -> None:
    store = Store.open(Path(path))
    store.save_job(ctx(job_id, node=node), [], [usage(node, m) for m in range(4)], time.time())
    store.close()


def test_concurrent_epilogs_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    Store.open(Path(path)).close()
    procs = [multiprocessing.Process(target=_writer, args=(path, 50 + i % 3, f"gn{i}")) for i in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM job_gpus").fetchone()[0] == 12 * 4
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 3


def test_readonly_store_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no job store"):
        Store.open(tmp_path / "missing.db", readonly=True)


def test_garbage_file_is_a_store_error_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"bad\.db"):
        Store.open(bad)
    assert bad.read_bytes() == b"this is not sqlite" * 100  # nothing overwritten


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store.open(path).close()
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        Store.open(path)
