"""Health checks, drains, the circuit breaker and the admin commands on the real cluster.

Each fault the simulator can inject: the right node is drained, with the right reason, by the right hook, and the
job completes elsewhere; warn-class and application faults drain nothing. gn3 simulates V100s (page retirement),
gn1 and gn2 H100s (row remapping).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import pytest

from .slurmgpu_cluster import SlurmGpuCluster

pytestmark = pytest.mark.cluster

LOAD = "slurmgpu sim load --util 40 --seconds 1\n"


@pytest.fixture
def cl(slurm: SlurmGpuCluster) -> Iterator[SlurmGpuCluster]:
    slurm.reset_nodes()
    yield slurm
    slurm.reset_nodes()


def db(cl: SlurmGpuCluster) -> sqlite3.Connection:
    return sqlite3.connect(cl.root / "slurmgpu" / "state" / "slurmgpu.db")


PROLOG_FAULTS = [
    # (node, gpu, fault args, reason prefix)
    ("gn1", 2, ["lost"], "slurmgpu: gpu-lost gpu2"),
    ("gn2", 1, ["ecc-uncorrectable"], "slurmgpu: ecc-uncorrectable gpu1"),
    ("gn1", 0, ["xid", "--code", "79"], "slurmgpu: xid gpu0: XID 79"),
    ("gn3", 3, ["retired-page-pending"], "slurmgpu: retired-pages-pending gpu3"),
    ("gn2", 0, ["remap-pending"], "slurmgpu: row-remap-pending gpu0"),
    ("gn1", 3, ["remap-failure"], "slurmgpu: row-remap-failure gpu3"),
    ("gn2", 2, ["thermal"], "slurmgpu: temperature gpu2: 94 C"),
    ("gn3", 0, ["unresponsive"], "slurmgpu: gpu-unresponsive gpu0"),
]


@pytest.mark.parametrize(
    ("node", "gpu", "fault", "reason"), PROLOG_FAULTS, ids=[f[2][0] for f in PROLOG_FAULTS]
)
def test_prolog_drains_the_faulty_node_and_the_job_runs_elsewhere(
    cl: SlurmGpuCluster, node: str, gpu: int, fault: list[str], reason: str
) -> None:
    cl.slurmgpu("sim", "fault", "--node", node, "--gpu", str(gpu), *fault)
    cl.prefer(node)
    job = cl.submit(LOAD, user="alice", gres="gpu:1")
    got = cl.wait_drained(node)
    assert got.startswith(reason), got
    assert cl.finish_requeued(job) == "COMPLETED", cl.cluster.show_job(job)
    assert cl.cluster.job_field(job, "NodeList") != node
    assert list(cl.drained_nodes()) == [node]  # nothing else was touched
    row = (
        db(cl)
        .execute(
            "SELECT source, job_id, readings_json FROM drains WHERE node = ? AND action = 'drain' "
            "ORDER BY id DESC LIMIT 1",
            (node,),
        )
        .fetchone()
    )
    assert row[0] == "prolog" and row[1] == job
    assert any(g["minor"] == gpu or g["status"] != "ok" for g in json.loads(row[2]))  # the evidence is kept
    # the admin view
    view = {v["name"]: v for v in json.loads(cl.slurmgpu("nodes", "--json").stdout)}
    assert view[node]["state"].startswith("drain") and view[node]["reason"] == got
    assert view[node]["last_health"] == "fail"
    # resume refuses while the last check failed; after the repair and a passing check it returns the node
    proc = cl.slurmgpu("resume", node, check=False)
    assert proc.returncode == 1 and "last health check failed" in proc.stderr
    cl.slurmgpu("sim", "clear", "--node", node)
    assert cl.slurmgpu("health", "--node", node, check=False).returncode in (0, 1)
    cl.slurmgpu("resume", node)
    assert "DRAIN" not in cl.cluster.node_info(node)["State"]


def test_leftover_process_from_an_earlier_job_drains_the_node(cl: SlurmGpuCluster) -> None:
    # a process that survived its job: still on gpu0 of gn1 with 5 GiB held
    cl.slurmgpu(
        "sim",
        "load",
        "--node",
        "gn1",
        "--gpus",
        "0",
        "--util",
        "0",
        "--mem-gib",
        "5",
        "--seconds",
        "600",
        "--no-wait",
    )
    cl.prefer("gn1")
    job = cl.submit(LOAD, user="bob", gres="gpu:4")
    reason = cl.wait_drained("gn1")
    assert reason.startswith("slurmgpu: leftover-processes gpu0: pid "), reason
    assert "5.0 GiB" in reason
    assert cl.finish_requeued(job) == "COMPLETED"
    assert cl.cluster.job_field(job, "NodeList") != "gn1"


def test_dcgm_health_in_the_prolog(cl: SlurmGpuCluster) -> None:
    scenario = cl.root / "dcgm-scenario.json"
    scenario.write_text(
        json.dumps(
            {
                "gpus": [0, 1, 2, 3],
                "health": {"incidents": [{"gpu": 1, "system": "nvlink", "health": "fail"}]},
            }
        )
    )
    wrapper = cl.root / "dcgmi"
    wrapper.write_text(
        f"#!/bin/sh\nexport SLURMGPU_FAKE_DCGMI={scenario}\n"
        f'exec {cl.exe.parent / "python"} -m slurmgpu.sim.fake_dcgmi "$@"\n'
    )
    wrapper.chmod(0o755)
    original = cl.config.read_text()
    try:
        cl.config.write_text(
            original.replace(
                "[thresholds]", f'[health]\ndcgmi_path = "{wrapper}"\ndcgm_in_prolog = true\n\n[thresholds]'
            )
        )
        cl.prefer("gn2")
        job = cl.submit(LOAD, user="alice", gres="gpu:1")
        reason = cl.wait_drained("gn2")
        # DCGM GPU id 1 is NVML index 1, whose device minor is 0 on these nodes (minor order 1, 0, 3, 2)
        assert reason.startswith("slurmgpu: dcgm-nvlink gpu0"), reason
        assert cl.finish_requeued(job) == "COMPLETED"
    finally:
        cl.config.write_text(original)


def test_unresponsive_gpu_keeps_the_prolog_within_its_budget(cl: SlurmGpuCluster) -> None:
    cl.slurmgpu("sim", "fault", "--node", "gn2", "--gpu", "3", "unresponsive")
    started = time.monotonic()
    proc = cl.slurmgpu("health", "--node", "gn2", "--json", check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert any(r["check"] == "gpu-unresponsive" for r in report["results"])
    assert elapsed < 3.0 + 2.0  # the configured GPU timeout is 3 s


EPILOG_FAULTS = [
    (["ecc-uncorrectable"], "slurmgpu: ecc-uncorrectable gpu"),
    (["xid", "--code", "79"], "slurmgpu: xid gpu"),
    (["remap-pending"], "slurmgpu: row-remap-pending gpu"),
]


@pytest.mark.parametrize(("fault", "reason"), EPILOG_FAULTS, ids=[f[0][0] for f in EPILOG_FAULTS])
def test_fault_during_the_job_drains_after_it(cl: SlurmGpuCluster, fault: list[str], reason: str) -> None:
    script = (
        "slurmgpu sim load --util 50 --seconds 1\n"
        f'slurmgpu sim fault --node "$SLURMD_NODENAME" --gpu "$SLURM_JOB_GPUS" {" ".join(fault)}\n'
    )
    job = cl.run_job(script, user="bob", gres="gpu:1", nodelist="gn1")  # the job itself completes
    got = cl.wait_drained("gn1")
    assert got.startswith(reason), got
    source = (
        db(cl).execute("SELECT source FROM drains WHERE node = 'gn1' ORDER BY id DESC LIMIT 1").fetchone()[0]
    )
    assert source == "epilog"
    assert cl.job_json(job)["gpus"]  # and its usage was still recorded


WARN_FAULTS = [
    ["pcie-degraded"],
    ["persistence-off"],
    ["ecc-correctable", "--count", "20000"],
    ["xid", "--code", "13"],  # application error
    ["xid", "--code", "63"],  # row remapping event: a warning
]


@pytest.mark.parametrize("fault", WARN_FAULTS, ids=["-".join(f) for f in WARN_FAULTS])
def test_warn_and_application_faults_drain_nothing(cl: SlurmGpuCluster, fault: list[str]) -> None:
    cl.slurmgpu("sim", "fault", "--node", "gn2", "--gpu", "0", *fault)
    job = cl.run_job(LOAD, user="alice", gres="gpu:1", nodelist="gn2")
    assert cl.cluster.job_field(job, "NodeList") == "gn2"
    assert cl.drained_nodes() == {}
    events = (
        db(cl)
        .execute("SELECT severity FROM health_events WHERE node = 'gn2' AND job_id = ?", (job,))
        .fetchall()
    )
    assert ("warn",) in events or (
        fault[0] == "xid" and fault[2] == "13"
    )  # an application error is not a warning


def test_circuit_breaker_caps_automatic_drains(cl: SlurmGpuCluster) -> None:
    # three nodes, 10% cap with a minimum of one: one drain, two nodes spared
    for node in ("gn1", "gn2", "gn3"):
        cl.slurmgpu("sim", "fault", "--node", node, "--gpu", "0", "ecc-uncorrectable")
    jobs = [cl.submit(LOAD, user="alice", gres="gpu:1", nodelist=node) for node in ("gn1", "gn2", "gn3")]
    deadline = time.monotonic() + 90
    while not cl.drained_nodes():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2)  # let the other prologs decide too
    drained = cl.drained_nodes()
    assert len(drained) == 1, drained
    spared = {"gn1", "gn2", "gn3"} - set(drained)
    for job, node in zip(jobs, ("gn1", "gn2", "gn3"), strict=True):
        if node in spared:
            assert cl.cluster.wait_job(job) == "COMPLETED"  # the prolog let it run
    assert cl.hook_log().count("NOT drained: circuit breaker") >= 2
    crit = (
        db(cl)
        .execute("SELECT DISTINCT node FROM health_events WHERE check_name = 'circuit-breaker'")
        .fetchall()
    )
    assert {r[0] for r in crit} >= spared
    # the job that hit the drained node was requeued: it completes once the faults are repaired
    (held,) = [j for j, n in zip(jobs, ("gn1", "gn2", "gn3"), strict=True) if n in drained]
    cl.reset_nodes()
    assert cl.finish_requeued(held) == "COMPLETED"


def test_internal_errors_never_drain_or_fail_a_job(cl: SlurmGpuCluster) -> None:
    original = cl.config.read_text()
    cl.slurmgpu("sim", "fault", "--node", "gn1", "--gpu", "0", "lost")
    try:
        cl.config.write_text(original + "\n[paths\n")  # a broken config file: our problem, not the node's
        cl.prefer("gn1")
        job = cl.cluster.sbatch("#!/bin/bash\ntrue\n", user="alice", gres="gpu:1")
        assert cl.cluster.wait_job(job) == "COMPLETED"
        assert cl.cluster.job_field(job, "NodeList") == "gn1"
        assert cl.drained_nodes() == {}
    finally:
        cl.config.write_text(original)
    # a corrupt simulator state (a bug or a bad driver answer of ours) is a warning, not a drain
    cl.slurmgpu("sim", "clear", "--node", "gn1")
    state = cl.root / "slurmgpu" / "sim" / "gn1.json"
    good = state.read_bytes()
    try:
        state.write_text("{not json")
        job = cl.cluster.sbatch("#!/bin/bash\ntrue\n", user="bob", gres="gpu:1")
        assert cl.cluster.wait_job(job) == "COMPLETED"
        assert cl.drained_nodes() == {}
    finally:
        state.write_bytes(good)


def test_health_as_slurm_health_check_drains_and_lifts_only_its_own(cl: SlurmGpuCluster) -> None:
    cl.slurmgpu("sim", "fault", "--node", "gn3", "--gpu", "1", "lost")
    proc = cl.slurmgpu("health", "--node", "gn3", "--slurm", check=False)
    assert proc.returncode == 2
    assert cl.drained_nodes()["gn3"].startswith("slurmgpu: gpu-lost gpu1")
    cl.slurmgpu("sim", "clear", "--node", "gn3")
    proc = cl.slurmgpu("health", "--node", "gn3", "--slurm", check=False)
    assert proc.returncode == 0, proc.stdout
    assert "gn3" not in cl.drained_nodes()
    # a manual drain is never lifted by the health check
    cl.slurmgpu("drain", "gn3", "--reason", "fan swap; 'quotes' & $(shell) chars")
    reason = cl.drained_nodes()["gn3"]
    assert reason == "slurmgpu: manual: fan swap; 'quotes' & $(shell) chars"
    assert cl.slurmgpu("health", "--node", "gn3", "--slurm", check=False).returncode == 0
    assert "gn3" in cl.drained_nodes()
    cl.slurmgpu("resume", "gn3")
    assert "gn3" not in cl.drained_nodes()
    by = db(cl).execute("SELECT action, actor, source FROM drains WHERE node = 'gn3' ORDER BY id").fetchall()
    assert ("drain", "root", "cli") in by and ("resume", "root", "cli") in by


def test_resume_leaves_other_drains_alone(cl: SlurmGpuCluster) -> None:
    cl.cluster.run(
        ["scontrol", "update", "nodename=gn2", "state=drain", "reason=rack maintenance"], check=True
    )
    proc = cl.slurmgpu("resume", "gn2", "--force", check=False)
    assert proc.returncode == 1 and "drained by someone else" in proc.stderr
    assert cl.drained_nodes()["gn2"] == "rack maintenance"
