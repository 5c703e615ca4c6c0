"""Choose the GPU backend the config names: real NVML, or the simulated node behind the same pynvml surface."""

from __future__ import annotations

from slurmgpu.config import Config
from slurmgpu.gpu.nvml import NvmlBackend


def open_backend(config: Config, node: str) -> NvmlBackend:
    timeout = config.thresholds.gpu_call_timeout_seconds
    if config.backend == "simulated":
        from slurmgpu.sim.fake_pynvml import make_module
        from slurmgpu.sim.state import SimNode

        return NvmlBackend(
            make_module(SimNode(config.sim_state_dir(), node, config.simulator)), timeout_seconds=timeout
        )
    return NvmlBackend(timeout_seconds=timeout)
