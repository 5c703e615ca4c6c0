"""Smoke test of the real-Slurm test harness: start a cluster, run GPU jobs, stop it."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from .harness import Cluster

HOOK = """#!/bin/sh
# No PATH in prolog/epilog environments: only shell builtins here.
echo "$SLURM_JOB_ID $SLURMD_NODENAME $SLURM_JOB_GPUS" >> {log}
exit 0
"""


def _hook_lines(path: Path, job_id: int) -> list[list[str]]:
    """The ``[job, node, gpus]`` lines a hook wrote for one job."""
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [row for row in rows if row and row[0] == str(job_id)]


@pytest.mark.cluster
def test_cluster_runs_gpu_jobs_with_accounting() -> None:
    if os.geteuid() != 0:
        pytest.skip("the real Slurm cluster harness needs root")
    root = Path(tempfile.mkdtemp(prefix="slurmgpu-cluster-", dir="/tmp"))
    root.chmod(0o755)
    prolog_log = root / "prolog.log"
    epilog_log = root / "epilog.log"
    prolog = root / "prolog.sh"
    epilog = root / "epilog.sh"
    prolog.write_text(HOOK.format(log=prolog_log))
    epilog.write_text(HOOK.format(log=epilog_log))
    prolog.chmod(0o755)
    epilog.chmod(0o755)

    cluster = Cluster(root / "cluster", prolog, epilog)
    passed = False
    try:
        cluster.start()
        assert cluster.start_seconds is not None
        phases = ", ".join(f"{name}={secs:.2f}s" for name, secs in cluster.phase_seconds.items())
        print(f"\ncluster start: {cluster.start_seconds:.2f}s ({phases})")

        began = time.monotonic()
        job_a = cluster.sbatch('echo "gpus=$SLURM_JOB_GPUS user=$(id -un)"', user="alice", gres="gpu:2")
        job_b = cluster.sbatch('echo "nodes=$SLURM_JOB_NUM_NODES"', user="bob", gres="gpu:1", nodes=2)
        assert job_a >= 1000
        assert job_b > job_a

        assert cluster.wait_job(job_a) == "COMPLETED", cluster.show_job(job_a)
        assert cluster.wait_job(job_b) == "COMPLETED", cluster.show_job(job_b)
        print(f"two jobs submitted to COMPLETED (epilogs done): {time.monotonic() - began:.2f}s")

        output_a = cluster.job_output(job_a)
        assert "user=alice" in output_a
        gpus_a = output_a.split("gpus=")[1].split()[0].split(",")
        assert len(gpus_a) == 2
        assert "nodes=2" in cluster.job_output(job_b)

        # The Prolog ran at allocation on every allocated node and saw the GPUs.
        rows_a = _hook_lines(prolog_log, job_a)
        assert len(rows_a) == 1 and len(rows_a[0]) == 3, rows_a
        assert rows_a[0][2].split(",") == gpus_a
        rows_b = _hook_lines(prolog_log, job_b)
        assert len(rows_b) == 2, rows_b
        nodelist_b = cluster.job_field(job_b, "NodeList")
        nodes_b = cluster.run(["scontrol", "show", "hostnames", nodelist_b]).stdout.split()
        assert len(nodes_b) == 2
        assert sorted(row[1] for row in rows_b) == sorted(nodes_b)
        assert all(len(row) == 3 and row[2] for row in rows_b), rows_b
        # wait_job returned only after the Epilog finished on every node.
        assert len(_hook_lines(epilog_log, job_b)) == 2
        assert len(_hook_lines(epilog_log, job_a)) == 1

        # Accounting: the user's account and the GPU TRES reach sacct.
        assert cluster.job_field(job_a, "Account") == "ml-team"
        assert cluster.job_field(job_a, "User") == "alice"
        assert "gres/gpu=2" in cluster.job_field(job_a, "AllocTRES")
        assert cluster.job_field(job_b, "Account") == "vision"
        assert "gres/gpu=2" in cluster.job_field(job_b, "AllocTRES")

        for node in cluster.nodes:
            info = cluster.node_info(node)
            assert info["NodeName"] == node
            assert "DRAIN" not in info["State"], info
            assert info["Gres"] == "gpu:4"
        passed = True
    finally:
        began = time.monotonic()
        cluster.stop()
        print(f"cluster stop: {time.monotonic() - began:.2f}s")
        cluster.stop()  # idempotent
        if passed:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"cluster files kept in {root}")
