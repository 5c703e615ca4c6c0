"""User stories on the real cluster: real sbatch jobs through our prolog and epilog, then `slurmgpu job`."""

from __future__ import annotations

import json
import time

import pytest

from .slurmgpu_cluster import SlurmGpuCluster

pytestmark = pytest.mark.cluster
GIB = 1 << 30


def test_one_gpu_load_is_measured_and_energy_matches_truth(slurm: SlurmGpuCluster) -> None:
    job = slurm.run_job("slurmgpu sim load --util 80 --mem-gib 20 --seconds 5\n", user="alice", gres="gpu:1")
    data = slurm.job_json(job)
    assert data["state"] == "COMPLETED" and data["job_id_raw"] == job
    (gpu,) = data["gpus"]
    truth = slurm.truth(
        gpu["node"], gpu["minor"], data["window_start_epoch_seconds"], data["window_end_epoch_seconds"]
    )
    # the load itself: 80% while it ran, 20 GiB held
    assert gpu["utilization_max_pct"] == 80.0
    assert gpu["memory_peak_bytes"] == 20 * GIB
    # over the job window the mean is diluted by start-up; it must match the exact time-weighted truth
    assert truth["utilization_max_pct"] == 80.0
    assert 40.0 < gpu["utilization_mean_pct"] <= 80.0
    assert abs(gpu["utilization_mean_pct"] - truth["utilization_mean_pct"]) < 1.0
    energy_j = gpu["energy_kwh"] * 3.6e6
    assert abs(energy_j - truth["energy_joules"]) <= 0.01 * truth["energy_joules"]
    assert data["gpu_hours_used"] < data["gpu_hours_allocated"]


def test_idle_second_gpu_is_named_in_a_hint(slurm: SlurmGpuCluster) -> None:
    script = 'first="${SLURM_JOB_GPUS%%,*}"\nslurmgpu sim load --util 70 --mem-gib 10 --seconds 3 --gpus "$first"\n'
    job = slurm.run_job(script, user="bob", gres="gpu:2")
    data = slurm.job_json(job)
    assert len(data["gpus"]) == 2
    busy = [g for g in data["gpus"] if g["utilization_max_pct"] == 70.0]
    idle = [g for g in data["gpus"] if g["utilization_max_pct"] == 0.0]
    assert len(busy) == 1 and len(idle) == 1
    idle_name = f"{idle[0]['node']}:gpu{idle[0]['minor']}"
    assert any(idle_name in h and "2 GPUs requested, 1 used" in h for h in data["hints"]), data["hints"]
    table = slurm.slurmgpu("job", str(job)).stdout
    assert idle_name in table and "Hints:" in table


def test_two_node_job_has_rows_for_both_nodes_in_one_record(slurm: SlurmGpuCluster) -> None:
    script = "srun --ntasks-per-node=1 slurmgpu sim load --util 50 --mem-gib 4 --seconds 3\n"
    job = slurm.run_job(script, user="alice", gres="gpu:1", nodes=2)
    data = slurm.job_json(job)
    nodes = sorted({g["node"] for g in data["gpus"]})
    assert len(nodes) == 2 and data["nodes"] == nodes
    assert len(data["gpus"]) == 2
    assert all(g["utilization_max_pct"] == 50.0 for g in data["gpus"])
    for g in data["gpus"]:
        truth = slurm.truth(
            g["node"], g["minor"], data["window_start_epoch_seconds"], data["window_end_epoch_seconds"]
        )
        assert (
            truth["utilization_max_pct"] == 50.0
        )  # the load ran on that node's GPU: attribution is by minor


def test_user_and_account_are_attributed(slurm: SlurmGpuCluster) -> None:
    job = slurm.run_job("slurmgpu sim load --util 30 --seconds 1\n", user="alice", gres="gpu:1")
    data = slurm.job_json(job)
    assert (data["user"], data["account"], data["partition"]) == ("alice", "ml-team", "gpu")
    assert slurm.cluster.job_field(job, "Account") == "ml-team"
    job_bob = slurm.run_job("true\n", user="bob", gres="gpu:1")
    data = slurm.job_json(job_bob)
    assert (data["user"], data["account"]) == ("bob", "vision")


def test_lost_gpu_drains_the_node_and_the_job_completes_elsewhere(slurm: SlurmGpuCluster) -> None:
    c = slurm.cluster
    slurm.slurmgpu("sim", "fault", "--node", "gn2", "--gpu", "2", "lost")
    slurm.prefer("gn2")  # the scheduler's first choice, so the next job really lands there
    try:
        job = slurm.submit("slurmgpu sim load --util 40 --seconds 1\nhostname\n", user="alice", gres="gpu:1")
        reason = slurm.wait_drained("gn2")
        assert reason.startswith("slurmgpu: gpu-lost gpu2"), reason
        # Slurm requeued the job after the failed prolog; make it eligible now instead of in two minutes
        assert slurm.finish_requeued(job) == "COMPLETED", c.show_job(job)
        ran_on = c.job_field(job, "NodeList")
        assert ran_on in ("gn1", "gn3"), ran_on
        data = slurm.job_json(job)
        assert [g["node"] for g in data["gpus"]] == [ran_on]
        assert "gpu-lost" in slurm.hook_log()
    finally:
        slurm.reset_nodes()


def test_unknown_and_malformed_job_ids(slurm: SlurmGpuCluster) -> None:
    proc = slurm.slurmgpu("job", "987654", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "987654" in proc.stderr
    proc = slurm.slurmgpu("job", "12;rm -rf /", check=False)
    assert proc.returncode != 0 and "bad job id" in proc.stderr and "Traceback" not in proc.stderr


def test_job_without_gpus_has_no_gpu_record(slurm: SlurmGpuCluster) -> None:
    job = slurm.run_job("true\n", user="bob", gres=None)
    proc = slurm.slurmgpu("job", str(job), check=False)
    assert proc.returncode == 1 and "no GPU record" in proc.stderr


def test_array_task_id_is_accepted(slurm: SlurmGpuCluster) -> None:
    job = slurm.submit(
        "slurmgpu sim load --util 60 --seconds 1\n", user="alice", gres="gpu:1", extra_args=["--array=0-1"]
    )
    for task in (0, 1):
        deadline = time.monotonic() + 90
        while True:
            proc = slurm.slurmgpu("job", f"{job}_{task}", "--json", check=False)
            data = json.loads(proc.stdout) if proc.returncode == 0 else {}
            if data.get("state") == "COMPLETED" and data.get("gpus"):
                break
            assert time.monotonic() < deadline, (proc.stderr, slurm.cluster.show_job(job))
            time.sleep(0.5)
        assert data["job_id"] == f"{job}_{task}"
        assert data["gpus"][0]["utilization_max_pct"] == 60.0
