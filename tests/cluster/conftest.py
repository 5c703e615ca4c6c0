"""The session's real Slurm cluster (see slurmgpu_cluster.py), started once and stopped by PID at the end."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from .slurmgpu_cluster import SlurmGpuCluster, start_cluster


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmGpuCluster]:
    if os.geteuid() != 0:
        pytest.fail("the cluster tests start a real Slurm and need root (run scripts/test.sh as root)")
    running = start_cluster()
    try:
        yield running
    finally:
        running.cluster.stop()
        if os.environ.get("SLURMGPU_KEEP_CLUSTER_DIR") != "1":
            shutil.rmtree(running.root, ignore_errors=True)
