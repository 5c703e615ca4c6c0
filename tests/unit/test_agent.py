"""The node agent against a simulated node: attribution, aggregates vs ground truth, checkpoint and resume,
the epilog's use of the aggregate, and the Prometheus collector (private registry)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.registry import CollectorRegistry
from tests.conftest import write_config

from slurmgpu.agent.exporter import AgentCollector
from slurmgpu.agent.loop import Agent
from slurmgpu.collection.aggregate import (
    MAX_POINTS,
    CheckpointEncoder,
    JobGpuAggregate,
    Point,
    _downsample,
    start,
    update,
)
from slurmgpu.config import load_config
from slurmgpu.gpu.types import GpuReading
from slurmgpu.log import HookLog
from slurmgpu.sim import control
from slurmgpu.sim.state import SimNode

ENV = {
    "SLURMD_NODENAME": "gn1",
    "SLURM_JOB_USER": "alice",
    "SLURM_JOB_UID": "1001",
    "SLURM_JOB_ACCOUNT": "ml-team",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_CLUSTER_NAME": "c",
}


def hook(name: str, cfg: Path, job: int, gpus: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURMGPU_CONFIG": str(cfg),
        **ENV,
        "SLURM_JOB_ID": str(job),
        "SLURM_JOB_GPUS": gpus,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "slurmgpu", "hook", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, sim="minor_order = [1, 0, 3, 2]")


def agent_for(cfg: Path) -> Agent:
    config = load_config(cfg)
    return Agent(config, "gn1", log=HookLog(cfg.parent / "agent.log", "agent"))


def sim(cfg: Path) -> SimNode:
    config = load_config(cfg)
    return SimNode(config.sim_state_dir(), "gn1", config.simulator)


def test_attribution_and_aggregates_follow_the_truth(cfg: Path) -> None:
    hook("prolog", cfg, 11, "0")
    hook("prolog", cfg, 12, "3")
    t0 = time.time()
    control.add_load(sim(cfg), (0,), 90, 8 << 30, 100, t0, t0 + 0.6)
    control.add_load(sim(cfg), (0,), 30, 8 << 30, 101, t0 + 0.6, t0 + 1.2)
    control.add_load(sim(cfg), (3,), 50, 2 << 30, 102, t0, t0 + 1.2)
    a = agent_for(cfg)
    for _ in range(4):
        a.round()
        time.sleep(0.4)
    snap = a.round()
    assert sorted(snap.jobs) == [11, 12]
    agg11, agg12 = a.aggregates[(11, 0)], a.aggregates[(12, 3)]
    assert (11, 3) not in a.aggregates and (12, 0) not in a.aggregates  # each GPU to its owner only
    now = snap.reading.gpus[0].timestamp_epoch_seconds if snap.reading else time.time()
    for agg, minor in ((agg11, 0), (agg12, 3)):
        truth = control.truth(sim(cfg), agg.start_epoch_seconds, agg.last_sample_us / 1e6, minor)["gpus"][0]
        assert agg.utilization_mean_pct is not None
        assert abs(agg.utilization_mean_pct - truth["utilization_mean_pct"]) < 2.0, (agg, truth)
    assert agg11.utilization_max_pct == 90 and agg11.memory_peak_bytes == 8 << 30
    assert agg12.utilization_max_pct == 50
    assert now > t0


def test_checkpoint_resume_and_epilog_prefer_the_agent(cfg: Path) -> None:
    hook("prolog", cfg, 21, "1")
    t0 = time.time()
    control.add_load(sim(cfg), (1,), 70, 1 << 30, 200, t0, t0 + 1.0)
    a = agent_for(cfg)
    a.round()
    time.sleep(0.5)
    a.round()
    a.checkpoint()
    before = a.aggregates[(21, 1)]
    b = agent_for(cfg)  # the agent was killed and restarted
    assert b.restore() == 1
    assert b.aggregates[(21, 1)] == before
    time.sleep(0.8)
    b.round()
    b.checkpoint()
    hook("epilog", cfg, 21, "1")
    row = (
        sqlite3.connect(cfg.parent / "state" / "slurmgpu.db")
        .execute(
            "SELECT source, utilization_mean_pct, utilization_max_pct, start_epoch, end_epoch FROM job_gpus "
            "WHERE job_id = 21"
        )
        .fetchone()
    )
    assert row[0] == "agent" and row[2] == 70
    # the driver's last sample lies up to 1/6 s before the epilog's reading: compare over what was sampled
    (final,) = load_config(cfg) and _aggregates(cfg, 21)
    truth = control.truth(sim(cfg), row[3], final.last_sample_us / 1e6, 1)["gpus"][0]
    assert abs(row[1] - truth["utilization_mean_pct"]) < 2.0
    assert row[4] - final.last_sample_us / 1e6 < 0.5


def _aggregates(cfg: Path, job: int) -> list[JobGpuAggregate]:
    from slurmgpu.store.db import Store

    store = Store.open(cfg.parent / "state" / "slurmgpu.db")
    try:
        return store.job_aggregates("unit", job)
    finally:
        store.close()


def test_agent_round_drops_finished_jobs(cfg: Path) -> None:
    hook("prolog", cfg, 31, "2")
    a = agent_for(cfg)
    a.round()
    assert (31, 2) in a.aggregates
    hook("epilog", cfg, 31, "2")
    a.round()
    assert (31, 2) not in a.aggregates and 31 not in a.jobs


def test_collector_serves_gpu_series_and_the_job_join(cfg: Path) -> None:
    hook("prolog", cfg, 41, "3")
    control.add_load(sim(cfg), (3,), 60, 4 << 30, 300, time.time() - 1, time.time() + 5)
    a = agent_for(cfg)
    a.round()
    reg = CollectorRegistry()
    reg.register(AgentCollector("gn1", lambda: a.snapshot))
    labels = {
        "node": "gn1",
        "gpu": "3",
        "uuid": next(g.uuid for g in a.snapshot.reading.gpus if g.minor == 3),
    }  # type: ignore[union-attr]
    assert reg.get_sample_value("slurmgpu_gpu_utilization_ratio", labels) == 0.6
    assert reg.get_sample_value("slurmgpu_gpu_memory_used_bytes", labels) == 4 << 30
    assert reg.get_sample_value("slurmgpu_gpu_energy_joules_total", labels) > 0  # type: ignore[operator]
    info = {**labels, "jobid": "41", "user": "alice", "account": "ml-team", "partition": "gpu"}
    assert reg.get_sample_value("slurmgpu_gpu_job_info", info) == 1.0
    assert reg.get_sample_value("slurmgpu_job_energy_joules", {**labels, "jobid": "41"}) > 0  # type: ignore[operator]
    assert reg.get_sample_value("slurmgpu_collector_success", {"node": "gn1", "collector": "nvml"}) == 1.0
    # no job label on per-GPU series: cardinality stays flat
    for metric in reg.collect():
        if metric.name.startswith("slurmgpu_gpu_") and metric.name != "slurmgpu_gpu_job_info":
            assert all("jobid" not in s.labels for s in metric.samples)


def test_lost_gpu_is_reported_down_not_a_broken_scrape(cfg: Path) -> None:
    control.inject_fault(sim(cfg), 0, "lost")
    a = agent_for(cfg)
    a.round()
    reg = CollectorRegistry()
    reg.register(AgentCollector("gn1", lambda: a.snapshot))
    downs = [s for m in reg.collect() if m.name == "slurmgpu_gpu_up" for s in m.samples if s.value == 0.0]
    assert len(downs) == 1 and downs[0].labels["status"] == "lost"


def reading(t: float, util: int, samples: tuple[tuple[int, int], ...]) -> GpuReading:
    return GpuReading(
        index=0,
        timestamp_epoch_seconds=t,
        minor=0,
        utilization_pct=util,
        memory_used_bytes=1 << 30,
        power_watts=100.0 + util,
        utilization_samples=samples,
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 100), min_size=1, max_size=300))
def test_aggregate_mean_is_the_sample_mean_and_within_bounds(utils: list[int]) -> None:
    agg = start(1, "gn1", 0, 1000.0)
    period_us = 166_667
    t_us = 1000 * 1_000_000
    for i in range(0, len(utils), 30):  # rounds of 5 s worth of samples
        chunk = []
        for u in utils[i : i + 30]:
            t_us += period_us
            chunk.append((t_us, u))
        agg = update(agg, reading(t_us / 1e6, chunk[-1][1], tuple(chunk)))
    assert agg.utilization_mean_pct is not None
    assert abs(agg.utilization_mean_pct - sum(utils) / len(utils)) < 1e-6
    assert agg.utilization_min_pct is not None and agg.utilization_max_pct is not None
    assert agg.utilization_min_pct - 1e-9 <= agg.utilization_mean_pct <= agg.utilization_max_pct + 1e-9
    assert len(agg.series) <= MAX_POINTS


def test_series_stays_bounded_and_keeps_its_mean() -> None:
    points = tuple(Point(float(i), float(i % 100), i, 10.0) for i in range(1000))
    while len(points) > MAX_POINTS:
        points = _downsample(points)
    assert len(points) <= MAX_POINTS
    total = sum(p.utilization_pct * p.weight for p in points) / sum(p.weight for p in points)
    assert abs(total - sum(i % 100 for i in range(1000)) / 1000) < 1e-9


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["rounds", "checkpoint", "restore", "new job"]), st.integers(1, 200)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, MAX_POINTS),
)
def test_checkpoint_encoder_writes_exactly_what_to_json_gives(
    steps: list[tuple[str, int]], prefill: int
) -> None:
    """The encoder re-uses series text between checkpoints. Through appends, downsampling (a series may be
    downsampled and grow past its old length between two checkpoints), restores (equal aggregate, new point objects)
    and a job id reused by a new job, its text must always decode to the aggregate's own to_json()."""
    encoder = CheckpointEncoder()
    agg = start(7, "gn1", 0, 1000.0)
    t = 1000.0

    def rounds(n: int, first_util: int) -> None:
        nonlocal agg, t
        for i in range(n):
            t += 10.0
            util = (first_util + 37 * i) % 101
            agg = update(agg, reading(t, util, ((int(t * 1e6), util),)))

    def checkpoint() -> None:
        text = encoder.encode(agg)
        assert json.loads(text) == json.loads(json.dumps(agg.to_json()))
        assert JobGpuAggregate.from_json(json.loads(text)) == agg

    rounds(prefill, 50)
    checkpoint()
    for step, n in steps:
        if step == "rounds":
            rounds(n, n)
        elif step == "restore":  # the agent was restarted
            agg = JobGpuAggregate.from_json(json.loads(json.dumps(agg.to_json())))
        elif step == "new job":  # same key, a fresh series
            agg = start(7, "gn1", 0, t)
            rounds(n, 3)
        checkpoint()


@pytest.mark.parametrize("events", [True, False], ids=["nvml-events", "kernel-log"])
def test_xid_during_a_job_is_recorded_against_it_and_drains(cfg: Path, events: bool) -> None:
    if not events:
        cfg.write_text(cfg.read_text().replace("[simulator]", "[simulator]\nxid_events = false"))
    bindir = cfg.parent / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {cfg.parent}/scontrol.args\n')
    (bindir / "scontrol").chmod(0o755)
    cfg.write_text(cfg.read_text().replace(f"{cfg.parent}/no-slurm-here", str(bindir)))
    control.inject_fault(sim(cfg), 2, "xid", code=13)  # before the agent: counted, not acted upon
    hook("prolog", cfg, 51, "2")
    a = agent_for(cfg)
    a.round()
    assert a._xid_source == ("nvml-events" if events else "kernel-log")
    assert not (cfg.parent / "scontrol.args").exists()
    control.inject_fault(sim(cfg), 2, "xid", code=79)
    snap = a.round()
    args = (cfg.parent / "scontrol.args").read_text().splitlines()
    assert args[:3] == ["update", "nodename=gn1", "state=drain"] and "XID 79" in args[3]
    assert snap.xid_counts == {2: 2}
    events = (
        sqlite3.connect(cfg.parent / "state" / "slurmgpu.db")
        .execute("SELECT job_id, hook, severity FROM health_events WHERE check_name = 'xid'")
        .fetchall()
    )
    assert events == [(51, "agent", "fail")]
    last = (
        sqlite3.connect(cfg.parent / "state" / "slurmgpu.db")
        .execute("SELECT count(*) FROM health_results")
        .fetchone()[0]
    )
    assert last == 0  # a single XID is not a full check: the node's last result is left alone


def _agent_once(cfg: Path, cpu_setting: str) -> subprocess.CompletedProcess[str]:
    cfg.write_text(cfg.read_text() + f"[agent]\ncpu = {cpu_setting}\n")
    return subprocess.run(
        [sys.executable, "-m", "slurmgpu", "agent", "--once", "--node", "gn1"],
        env={"PATH": "/usr/bin:/bin", "SLURMGPU_CONFIG": str(cfg)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_agent_pins_itself_to_the_highest_cpu_it_may_use(cfg: Path) -> None:
    proc = _agent_once(cfg, '"auto"')
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["cpu"] == max(os.sched_getaffinity(0))
    assert out["allowed_cpus"] == [out["cpu"]]  # what the process itself reported after pinning


def test_agent_cpu_off_leaves_affinity_alone(cfg: Path) -> None:
    proc = _agent_once(cfg, '"off"')
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["cpu"] is None and out["allowed_cpus"] == sorted(os.sched_getaffinity(0))


def test_agent_refuses_a_cpu_it_may_not_use_in_one_line(cfg: Path) -> None:
    proc = _agent_once(cfg, str(max(os.sched_getaffinity(0)) + 64))
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "[agent] cpu" in proc.stderr and "Traceback" not in proc.stderr


def test_collector_reports_each_gpus_health_and_names_the_fault(cfg: Path) -> None:
    control.inject_fault(sim(cfg), 1, "ecc-uncorrectable")
    control.inject_fault(sim(cfg), 2, "persistence-off")
    control.inject_fault(sim(cfg), 3, "lost")
    a = agent_for(cfg)
    a.round()
    reg = CollectorRegistry()
    reg.register(AgentCollector("gn1", lambda: a.snapshot, load_config(cfg).health))
    status = {
        s.labels["gpu"]: s.value
        for m in reg.collect()
        if m.name == "slurmgpu_gpu_health_status"
        for s in m.samples
    }
    faults = {
        (s.labels["gpu"], s.labels["check"], s.labels["severity"])
        for m in reg.collect()
        if m.name == "slurmgpu_gpu_health_fault"
        for s in m.samples
    }
    xids = {s.labels["gpu"] for m in reg.collect() if m.name == "slurmgpu_gpu_xid_errors" for s in m.samples}
    assert xids == {
        "0",
        "1",
        "2",
        "3",
    }  # a lost GPU keeps its XID count (XID 79 is how GPUs fall off the bus)
    assert status == {"0": 0.0, "1": 2.0, "2": 1.0, "3": 2.0}
    assert faults == {
        ("1", "ecc-uncorrectable", "fail"),
        ("2", "persistence-mode", "warn"),
        ("3", "gpu-lost", "fail"),
    }
