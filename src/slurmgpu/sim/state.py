"""A simulated node's state, shared by every process on the host through one JSON file per node name.

Writers take an flock on `<node>.lock`, read, change and write the file atomically (temp file + rename), so
readers need no lock and always see a whole state. Readers cache the parsed file by its mtime.

The directory and files are world-writable on purpose: a job (running as its user) declares its own GPU load, just
as any user process can drive a real GPU through /dev/nvidia* (mode 0666). This is a test device, never used with
the nvml backend.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slurmgpu.config import SimulatorConfig
from slurmgpu.errors import InputError
from slurmgpu.sim import physics
from slurmgpu.sim.models import MODELS, GpuModel, pci_bus_id

STATE_VERSION = 1
MAX_SEGMENTS_PER_GPU = 2000  # older segments are folded into the counter (truth before the horizon is lost)
NODE_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

HEALTHY_FAULTS: dict[str, Any] = {
    "lost": False,
    "unresponsive": False,
    "thermal": False,
    "persistence_off": False,
    "pcie_degraded": False,
    "ecc_volatile_corrected": 0,
    "ecc_volatile_uncorrected": 0,
    "ecc_aggregate_corrected": 0,
    "ecc_aggregate_uncorrected": 0,
    "retired_single_bit": 0,
    "retired_double_bit": 0,
    "retired_pending": False,
    "remap_correctable": 0,
    "remap_uncorrectable": 0,
    "remap_pending": False,
    "remap_failure": False,
    "xids": [],
}


def check_node_name(node: str) -> str:
    if not node or not set(node) <= NODE_NAME_OK or node.startswith("."):
        raise InputError(f"bad node name {node!r}: letters, digits, '-', '_' and '.' only")
    return node


class SimNode:
    """The simulated GPUs of one node."""

    def __init__(self, state_dir: Path, node: str, config: SimulatorConfig) -> None:
        self.state_dir = state_dir
        self.node = check_node_name(node)
        self.config = config
        self.path = state_dir / f"{node}.json"
        self.kmsg_path = state_dir / f"{node}.kmsg"
        self._cache: tuple[int, dict[str, Any]] | None = None

    # -- reading -----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The current state (created on first use), re-read only when the file changed."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self.update(lambda s: None)
            mtime = self.path.stat().st_mtime_ns
        if self._cache is None or self._cache[0] != mtime:
            with self.path.open("rb") as f:
                self._cache = (mtime, _decode(json.load(f)))
        return self._cache[1]

    def model(self, state: dict[str, Any] | None = None) -> GpuModel:
        return MODELS[(state or self.state())["model"]]

    # -- writing -----------------------------------------------------------------------------------------------

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply `change` to the state under the node's lock and write it atomically."""
        _make_shared_dir(self.state_dir)
        with self._locked():
            if self.path.exists():
                with self.path.open("rb") as f:
                    state = _decode(json.load(f))
            else:
                state = self._new_state()
            change(state)
            _fold_old_segments(state, MODELS[state["model"]])
            self._write(state)
        self._cache = None
        return state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.state_dir / f"{self.node}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            fd = os.open(lock_path, os.O_RDONLY)
        try:
            with contextlib.suppress(PermissionError):
                os.fchmod(fd, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, state: dict[str, Any]) -> None:
        # Under the node lock one writer at a time; the pid keeps crashed writers' leftovers apart.
        tmp = self.state_dir / f".{self.node}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(_encode(state), f, separators=(",", ":"))
            os.chmod(tmp, 0o666)  # noqa: S103 - simulated device state, see module docstring
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _new_state(self) -> dict[str, Any]:
        key = self.config.model_for(self.node)
        if key not in MODELS:
            raise InputError(f"unknown simulated GPU model {key!r} (known: {', '.join(sorted(MODELS))})")
        model = MODELS[key]
        count = self.config.gpus_per_node
        minors = self.config.minor_order or tuple(range(count))
        import uuid  # only when a node is first created

        now = time.time()
        gpus = []
        for ordinal, minor in enumerate(minors):
            # A plausible counter value since driver load (about a day at idle power), different per GPU.
            base = model.idle_power_watts * 86400.0 * (1.0 + 0.01 * minor)
            gpus.append(
                {
                    "minor": minor,
                    "uuid": "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"slurmgpu-sim/{self.node}/{minor}")),
                    "pci_bus_id": pci_bus_id(ordinal),
                    "horizon_epoch_seconds": now,
                    "energy_at_horizon_joules": base,
                    "segments": [],
                    "faults": dict(HEALTHY_FAULTS, xids=[]),
                }
            )
        return {
            "version": STATE_VERSION,
            "node": self.node,
            "model": key,
            "created_epoch_seconds": now,
            "accounting_mode": self.config.accounting_mode,
            "gpus": gpus,
        }

    # -- helpers used by the fake pynvml and the sim CLI -------------------------------------------------------

    def gpu_by_minor(self, state: dict[str, Any], minor: int) -> dict[str, Any]:
        for gpu in state["gpus"]:
            if gpu["minor"] == minor:
                found: dict[str, Any] = gpu
                return found
        minors = ", ".join(str(g["minor"]) for g in state["gpus"])
        raise InputError(f"node {self.node} has no GPU {minor} (GPUs: {minors})")

    def energy_counter_joules(self, gpu: dict[str, Any], t: float) -> float:
        model = self.model()
        return float(gpu["energy_at_horizon_joules"]) + physics.energy_joules(
            model, gpu["segments"], gpu["horizon_epoch_seconds"], t
        )

    def append_kmsg(self, line: str) -> None:
        """Write a kernel-log line the way the NVIDIA driver would (read by the XID source)."""
        uptime = time.monotonic()
        fd = os.open(self.kmsg_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            with contextlib.suppress(PermissionError):
                os.fchmod(fd, 0o666)
            os.write(fd, f"[{uptime:12.6f}] {line}\n".encode())
        finally:
            os.close(fd)


def _make_shared_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chmod(path, 0o777)  # noqa: S103 - a simulated device anyone may drive (module docstring)


def _fold_old_segments(state: dict[str, Any], model: GpuModel) -> None:
    now = time.time()
    for gpu in state["gpus"]:
        segments: list[physics.Segment] = gpu["segments"]
        if len(segments) <= MAX_SEGMENTS_PER_GPU:
            continue
        ends = sorted(s.end_epoch_seconds for s in segments)
        horizon = min(ends[len(segments) - MAX_SEGMENTS_PER_GPU // 2], now)
        if horizon <= gpu["horizon_epoch_seconds"]:
            continue
        gpu["energy_at_horizon_joules"] += physics.energy_joules(
            model, segments, gpu["horizon_epoch_seconds"], horizon
        )
        gpu["horizon_epoch_seconds"] = horizon
        gpu["folded_before_epoch_seconds"] = horizon
        gpu["segments"] = [s for s in segments if s.end_epoch_seconds > horizon]


def _decode(raw: dict[str, Any]) -> dict[str, Any]:
    if raw.get("version") != STATE_VERSION:
        raise InputError(f"simulator state version {raw.get('version')!r} is not {STATE_VERSION}")
    for gpu in raw["gpus"]:
        gpu["segments"] = [physics.Segment(*s) for s in gpu["segments"]]
        gpu["faults"] = dict(HEALTHY_FAULTS, **gpu.get("faults", {}))
    return raw


def _encode(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    out["gpus"] = []
    for gpu in state["gpus"]:
        g = dict(gpu)
        g["segments"] = [
            [s.start_epoch_seconds, s.end_epoch_seconds, s.utilization_pct, s.memory_bytes, s.pid]
            for s in gpu["segments"]
        ]
        out["gpus"].append(g)
    return out
