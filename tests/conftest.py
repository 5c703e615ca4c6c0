"""Shared fixtures: a simulated node under a temporary directory, and a config that points there."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmgpu.config import Config, PathsConfig, SimulatorConfig, ThresholdsConfig
from slurmgpu.gpu.nvml import NvmlBackend
from slurmgpu.sim.fake_pynvml import make_module
from slurmgpu.sim.state import SimNode


def write_config(tmp: Path, *, extra: str = "", sim: str = "") -> Path:
    path = tmp / "slurmgpu.toml"
    path.write_text(
        f"""backend = "simulated"
cluster = "unit"
[paths]
state_dir = "{tmp}/state"
run_dir = "{tmp}/run/{{node}}"
database = "{tmp}/state/slurmgpu.db"
log_file = "{tmp}/state/slurmgpu.log"
slurm_bin_dir = "{tmp}/no-slurm-here"
[thresholds]
gpu_call_timeout_seconds = 1.0
[simulator]
state_dir = "{tmp}/sim"
{sim}
{extra}
"""
    )
    return path


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(
        backend="simulated",
        cluster="unit",
        paths=PathsConfig(
            state_dir=f"{tmp_path}/state",
            run_dir=f"{tmp_path}/run/{{node}}",
            database=f"{tmp_path}/state/slurmgpu.db",
            log_file=f"{tmp_path}/state/slurmgpu.log",
            slurm_bin_dir=f"{tmp_path}/no-slurm-here",
        ),
        thresholds=ThresholdsConfig(gpu_call_timeout_seconds=1.0),
        simulator=SimulatorConfig(state_dir=f"{tmp_path}/sim"),
    )


def sim_node(tmp_path: Path, node: str = "gn1", **sim: object) -> SimNode:
    return SimNode(tmp_path / "sim", node, SimulatorConfig(state_dir=str(tmp_path / "sim"), **sim))  # type: ignore[arg-type]


def backend_for(node: SimNode, timeout: float = 1.0) -> NvmlBackend:
    return NvmlBackend(make_module(node), timeout_seconds=timeout)
