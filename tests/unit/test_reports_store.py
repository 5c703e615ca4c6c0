"""The store side of reports: the `job_usage` rollup kept by triggers equals its Python twin and the on-the-fly SQL,
grouping by any key preserves the totals (Hypothesis), re-run epilogs never double count, and users who cannot
write the state directory can read the store."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurmgpu.slurm.env import JobContext
from slurmgpu.store.db import Store, read_consistently
from slurmgpu.store.queries import (
    GROUP_KEYS,
    ReportFilter,
    cells,
    cells_from_usages,
    top_jobs,
    top_jobs_from_usages,
)
from slurmgpu.store.records import JobGpuUsage
from slurmgpu.store.usage import JobUsage, UsageSums, job_usages, model_groups

MODELS = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", None]
ALL = ReportFilter(0.0, 4e9)


def ctx(job_id: int, node: str = "gn1", **kw: object) -> JobContext:
    base: dict[str, object] = dict(
        job_id=job_id,
        node=node,
        cluster="c",
        user="alice",
        uid=1001,
        account="ml-team",
        partition="gpu",
        gpus=(0,),
    )
    base.update(kw)
    return JobContext(**base)  # type: ignore[arg-type]


def usage(node: str, minor: int, **kw: object) -> JobGpuUsage:
    base: dict[str, object] = dict(
        node=node,
        minor=minor,
        uuid=None,
        model=MODELS[0],
        memory_total_bytes=80 << 30,
        start_epoch_seconds=1000.0,
        end_epoch_seconds=4600.0,
        energy_joules=1.8e6,
        utilization_mean_pct=50.0,
        utilization_max_pct=80.0,
        memory_peak_bytes=20 << 30,
        memory_utilization_mean_pct=30.0,
        source="nvml-accounting",
    )
    base.update(kw)
    return JobGpuUsage(**base)  # type: ignore[arg-type]


def rollup(store: Store) -> dict[tuple[str, int, str], tuple[object, ...]]:
    rows = store.conn.execute("SELECT * FROM job_usage").fetchall()
    return {(r[0], r[1], r[2]): r[3:] for r in rows}


def _indexes(conn: sqlite3.Connection, table: str) -> set[tuple[str, ...]]:
    names = [r[1] for r in conn.execute(f"PRAGMA index_list({table})")]
    return {tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})")) for name in names}


def test_schema_has_the_rollup_its_triggers_and_indexes(tmp_path: Path) -> None:
    Store.open(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"job_usage", "job_notes"} <= tables
    info = conn.execute("PRAGMA table_info(job_usage)").fetchall()  # (cid, name, type, notnull, default, pk)
    assert [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])] == [
        "cluster",
        "job_id",
        "model",
    ]
    columns = {r[1] for r in info}
    assert set(UsageSums.__dataclass_fields__) <= columns  # the Python twin's fields are the rollup's columns
    triggers = {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    }
    assert triggers >= {
        "job_usage_gpu_insert",
        "job_usage_gpu_update",
        "job_usage_gpu_delete",
        "job_usage_job_update",
        "job_usage_job_delete",
    }
    assert {("end_epoch",), ("account", "end_epoch"), ("user", "end_epoch")} <= _indexes(conn, "job_usage")
    assert ("first_seen_epoch",) in _indexes(conn, "jobs")


def test_rollup_follows_every_write_and_never_double_counts(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.save_job(ctx(1), [], [usage("gn1", 0), usage("gn1", 1, utilization_mean_pct=1.0)], 10.0)
    first = rollup(store)
    for _ in range(3):  # the epilog run again: replaced, not added
        store.save_job(ctx(1), [], [usage("gn1", 0), usage("gn1", 1, utilization_mean_pct=1.0)], 11.0)
    assert rollup(store)[("c", 1, MODELS[0])][5:] == first[("c", 1, MODELS[0])][5:]
    store.save_job(
        ctx(1, node="gn2"), [], [usage("gn2", 0, model=MODELS[1])], 12.0
    )  # second node, other model
    rows = rollup(store)
    assert set(rows) == {("c", 1, MODELS[0]), ("c", 1, MODELS[1])}
    assert sum(int(r[4]) for r in rows.values()) == 1  # job_share: one row counts the job
    h100 = rows[("c", 1, MODELS[0])]
    assert (
        h100[5] == 2 and h100[6] == pytest.approx(7200.0) and h100[9] == pytest.approx(3600.0)
    )  # gpus, s, idle s
    assert h100[3] == 10.0  # end_epoch: when the record was first written (first_seen)
    store.save_job(ctx(1, user="bob", account="vision"), [], [usage("gn1", 0), usage("gn1", 1)], 13.0)
    assert {r[0] for r in rollup(store).values()} == {"bob"}  # the jobs row's update reaches the rollup
    store.conn.execute("DELETE FROM job_gpus WHERE node = 'gn2'")
    assert set(rollup(store)) == {("c", 1, MODELS[0])}
    store.conn.execute("DELETE FROM jobs")
    assert rollup(store) == {}
    store.close()


gpu_rows = st.lists(
    st.builds(
        lambda minor, model, start, length, util, energy, peak, total: usage(
            "gn1",
            minor,
            model=model,
            start_epoch_seconds=start,
            end_epoch_seconds=start + length,
            utilization_mean_pct=util,
            utilization_max_pct=util,
            energy_joules=energy,
            memory_peak_bytes=peak,
            memory_total_bytes=total,
            source="none" if util is None else "nvml-accounting",
        ),
        st.integers(0, 7),
        st.sampled_from(MODELS),
        st.floats(1e9, 1.0001e9),
        st.floats(-10, 1e5),  # a negative window (clock step) counts as 0
        st.none() | st.floats(0, 100),
        st.none() | st.floats(0, 1e8),
        st.none() | st.integers(0, 80 << 30),
        st.none() | st.integers(0, 80 << 30),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda u: u.minor,
)
jobs_strategy = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob", "carol"]),
        st.sampled_from(["ml-team", "vision"]),
        st.sampled_from(["gpu", "debug"]),
        st.floats(1e9, 1.0005e9),
        st.dictionaries(st.sampled_from(["gn1", "gn2"]), gpu_rows, min_size=1, max_size=2),
    ),
    min_size=1,
    max_size=12,
)


def fill(
    store: Store, jobs: list[tuple[str, str, str, float, dict[str, list[JobGpuUsage]]]]
) -> list[JobUsage]:
    """Save the jobs as epilogs would; return the Python twin's JobUsage rows for them."""
    twins: list[JobUsage] = []
    for job_id, (user, account, partition, when, nodes) in enumerate(jobs, 1):
        gpus: list[JobGpuUsage] = []
        for node, rows in sorted(nodes.items()):
            node_rows = [
                JobGpuUsage(**{**r.__dict__, "node": node})  # type: ignore[arg-type]
                for r in rows
            ]
            store.save_job(
                ctx(job_id, node=node, user=user, account=account, partition=partition), [], node_rows, when
            )
            gpus.extend(node_rows)
        twins.extend(
            job_usages(
                cluster="c",
                job_id=job_id,
                user=user,
                account=account,
                partition=partition,
                end_epoch_seconds=when,
                groups=model_groups(gpus, 5.0),
            )
        )
    return twins


def same(a: UsageSums, b: UsageSums) -> None:
    for name in a.__dataclass_fields__:
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-6), name


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs=jobs_strategy, idle=st.sampled_from([5.0, 20.0]))
def test_grouping_by_any_key_preserves_the_totals_and_sql_equals_python(
    tmp_path_factory: pytest.TempPathFactory,
    jobs: list[tuple[str, str, str, float, dict[str, list[JobGpuUsage]]]],
    idle: float,
) -> None:
    store = Store.open(tmp_path_factory.mktemp("g") / "s.db")
    try:
        twins = fill(store, jobs)
        if idle != 5.0:  # the twin with the other threshold, from the stored rows
            twins = []
            for job_id in range(1, len(jobs) + 1):
                record = store.job("c", job_id)
                assert record is not None
                twins.extend(
                    job_usages(
                        cluster="c",
                        job_id=job_id,
                        user=record.meta.user,
                        account=record.meta.account,
                        partition=record.meta.partition,
                        end_epoch_seconds=record.meta.first_seen_epoch_seconds,
                        groups=model_groups(record.gpus, idle),
                    )
                )
        total = UsageSums.total(u.sums for u in twins)
        for key in GROUP_KEYS:
            sql = cells(store, ALL, (key,), idle)
            same(UsageSums.total(c.sums for c in sql), total)
            assert sum(c.jobs for c in sql) == len(jobs)  # each job counted once, whatever the key
            if key != "gpu-model":
                per_group: dict[tuple[str, ...], int] = {}
                for c in sql:
                    per_group[c.key] = per_group.get(c.key, 0) + c.jobs
                assert sum(per_group.values()) == len(jobs)
            python = {(c.key, c.partition, c.model): c for c in cells_from_usages(twins, (key,))}
            assert set(python) == {(c.key, c.partition, c.model) for c in sql}
            for c in sql:
                twin = python[(c.key, c.partition, c.model)]
                same(c.sums, twin.sums)
                assert (c.jobs, c.job_models) == (twin.jobs, twin.job_models)
        sql_top = top_jobs(store, ALL, idle, 5)
        py_top = top_jobs_from_usages(twins, 5)
        assert [round(j.sums.gpu_hours_unused, 6) for j in sql_top] == [
            round(j.sums.gpu_hours_unused, 6) for j in py_top
        ]
    finally:
        store.close()


def test_filters_and_window(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.save_job(ctx(1), [], [usage("gn1", 0)], 100.0)
    store.save_job(ctx(2, user="bob", account="vision"), [], [usage("gn1", 1)], 200.0)
    store.save_job(ctx(3, partition="debug"), [], [usage("gn1", 2, model=MODELS[1])], 300.0)
    for idle in (5.0, 10.0):
        assert {c.key for c in cells(store, ReportFilter(0, 1000, account="vision"), ("user",), idle)} == {
            ("bob",)
        }
        assert (
            sum(c.jobs for c in cells(store, ReportFilter(150, 300), ("user",), idle)) == 1
        )  # [since, until)
        assert {
            c.key for c in cells(store, ReportFilter(0, 1000, partition="debug"), ("gpu-model",), idle)
        } == {(MODELS[1],)}
        assert cells(store, ReportFilter(0, 1000, cluster="other"), ("user",), idle) == []
        days = {c.key for c in cells(store, ReportFilter(0, 1000), ("day",), idle)}
        assert days == {(time.strftime("%Y-%m-%d", time.localtime(100.0)),)}
    store.close()


def test_readers_see_a_consistent_store_and_retry_after_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    store = Store.open(path)
    store.save_job(ctx(1), [], [usage("gn1", 0)], 100.0)
    store.close()
    assert not path.with_name("s.db-wal").exists()  # the last writer removed its log
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    reader = Store.open_reader(path)
    assert reader.immutable_signature is not None and reader.unchanged_since_open()
    writer = Store.open(path)
    writer.save_job(ctx(2), [], [usage("gn1", 1)], 200.0)
    writer.close()
    assert not reader.unchanged_since_open()  # a writer changed the file
    reader.close()
    attempts = []

    def count(store: Store) -> int:
        attempts.append(1)
        if len(attempts) == 1:  # a writer commits while the first read is going on
            w = Store.open(path)
            w.save_job(ctx(3), [], [usage("gn1", 2)], 300.0)
            w.close()
        return int(store.conn.execute("SELECT count(*) FROM jobs").fetchone()[0])

    assert read_consistently(path, count) == 3 and len(attempts) == 2


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run as another user"
)
def test_a_user_reads_roots_store_in_a_directory_they_cannot_write() -> None:
    root = Path(tempfile.mkdtemp(prefix="slurmgpu-reader-", dir="/tmp"))
    try:
        root.chmod(0o755)
        state = root / "state"
        path = state / "slurmgpu.db"
        store = Store.open(path)  # creates state/ 0755 and the file 0644, as the epilog does
        store.save_job(ctx(1, user="nobody"), [], [usage("gn1", 0)], time.time())
        store.close()
        assert oct(path.stat().st_mode & 0o777) == "0o644" and oct(state.stat().st_mode & 0o777) == "0o755"
        code = (
            "import sys; from pathlib import Path; from slurmgpu.store.db import read_consistently; from slurmgpu.store.queries import cells, "
            "ReportFilter; print(sum(c.jobs for c in read_consistently(Path(sys.argv[1]), "
            "lambda s: cells(s, ReportFilter(0, 4e9), ('user',), 5.0))))"
        )
        cmd = ["runuser", "-u", "nobody", "--", sys.executable, "-c", code, str(path)]
        quiet = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
        assert quiet.returncode == 0 and quiet.stdout.strip() == "1", (
            quiet.stderr
        )  # no -wal: read as immutable
        holder = Store.open(path)  # a writer is connected: -wal and -shm exist, the reader uses them
        holder.save_job(ctx(2, user="nobody"), [], [usage("gn1", 1)], time.time())
        busy = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
        holder.close()
        assert busy.returncode == 0 and busy.stdout.strip() == "2", busy.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
