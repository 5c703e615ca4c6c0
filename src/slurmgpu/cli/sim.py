"""`slurmgpu sim ...`: drive the GPU simulator (demo and tests; needs `backend = "simulated"`)."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from types import FrameType

import click

from slurmgpu.cli.common import handle_errors, load_cli_config
from slurmgpu.config import Config
from slurmgpu.errors import InputError
from slurmgpu.gpu.ids import parse_gpu_list
from slurmgpu.sim import control
from slurmgpu.sim.state import SimNode


def _node(config: Config, node: str | None) -> SimNode:
    if config.backend != "simulated":
        raise InputError(
            f'the simulator needs backend = "simulated" (this config, {config.source}, uses '
            f"{config.backend!r})"
        )
    name = node or os.environ.get("SLURMD_NODENAME", "")
    if not name:
        raise InputError("no node: pass --node or run inside a Slurm job (SLURMD_NODENAME)")
    return SimNode(config.sim_state_dir(), name, config.simulator)


def _job_gpus(gpus: str | None) -> tuple[int, ...]:
    if gpus is not None:
        return parse_gpu_list(gpus, name="--gpus")
    # SLURM_JOB_GPUS holds the global minors even where cgroups renumber CUDA_VISIBLE_DEVICES from 0.
    for key in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        if os.environ.get(key, "").strip():
            return parse_gpu_list(os.environ[key], name=key)
    raise InputError("no GPUs: pass --gpus or run inside a GPU job (SLURM_JOB_GPUS / CUDA_VISIBLE_DEVICES)")


def _epoch(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InputError(f"{name} {value!r} is neither epoch seconds nor an ISO 8601 time") from None


@click.group()
def sim() -> None:
    """Simulated GPUs: load, faults, ground truth."""


@sim.command()
@click.option("--util", "util", type=float, required=True, help="GPU utilization in percent (0..100).")
@click.option("--mem-gib", type=float, default=0.0, show_default=True, help="GPU memory held, GiB.")
@click.option("--seconds", type=float, default=None, help="Duration; without it, run until stopped.")
@click.option("--gpus", default=None, help="GPU minors (default: the job's SLURM_JOB_GPUS).")
@click.option("--node", default=None, help="Node (default: SLURMD_NODENAME).")
@click.option("--no-wait", is_flag=True, help="With --seconds: declare the load and return at once.")
@handle_errors
def load(
    util: float, mem_gib: float, seconds: float | None, gpus: str | None, node: str | None, no_wait: bool
) -> None:
    """Run a simulated compute process on the job's GPUs.

    Utilization and memory follow, power follows utilization, the energy counter integrates power, and the
    process shows in NVML's process list and accounting stats.

    Example:

        srun slurmgpu sim load --util 80 --mem-gib 20 --seconds 60
    """
    config = load_cli_config()
    target = _node(config, node)
    minors = _job_gpus(gpus)
    if seconds is not None and seconds <= 0:
        raise InputError("--seconds must be positive")
    pid = os.getpid()
    start = time.time()
    mem = int(mem_gib * control.GIB)
    if seconds is not None:
        control.add_load(target, minors, util, mem, pid, start, start + seconds)
        if not no_wait:
            time.sleep(max(0.0, start + seconds - time.time()))
        return
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    control.add_load(target, minors, util, mem, pid, start, start + control.LEASE_SECONDS)
    renew_at = start + control.LEASE_SECONDS / 3
    while not stop:
        time.sleep(0.2)
        if not stop and time.time() >= renew_at:
            control.set_load_end(target, minors, pid, start, time.time() + control.LEASE_SECONDS)
            renew_at = time.time() + control.LEASE_SECONDS / 3
    control.set_load_end(target, minors, pid, start, time.time())


@sim.command()
@click.option("--node", required=True, help="Simulated node name.")
@click.option("--gpu", "minor", type=int, required=True, help="GPU minor number (as Slurm names it).")
@click.argument("kind", type=click.Choice(control.FAULT_NAMES))
@click.option("--code", type=int, default=None, help="XID code, for KIND xid.")
@click.option("--count", type=int, default=1, show_default=True, help="How many errors, for ECC kinds.")
@handle_errors
def fault(node: str, minor: int, kind: str, code: int | None, count: int) -> None:
    """Inject a fault into one simulated GPU.

    Example:

        slurmgpu sim fault --node gn2 --gpu 0 lost
    """
    click.echo(control.inject_fault(_node(load_cli_config(), node), minor, kind, code=code, count=count))


@sim.command()
@click.option("--node", required=True, help="Simulated node name.")
@click.option("--gpu", "minor", type=int, default=None, help="Only this GPU minor.")
@handle_errors
def clear(node: str, minor: int | None) -> None:
    """Clear the faults of a node's simulated GPUs (as after replacing the board).

    Example:

        slurmgpu sim clear --node gn2
    """
    n = control.clear_faults(_node(load_cli_config(), node), minor)
    click.echo(f"{node}: cleared {n} GPU(s)")


@sim.command()
@click.option("--node", required=True, help="Simulated node name.")
@click.option("--since", default=None, help="Start (epoch seconds or ISO 8601); default: all history.")
@click.option("--until", default=None, help="End (epoch seconds or ISO 8601); default: now.")
@click.option("--gpu", "minor", type=int, default=None, help="Only this GPU minor.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@handle_errors
def truth(node: str, since: str | None, until: str | None, minor: int | None, as_json: bool) -> None:
    """Exact energy and time-weighted utilization per GPU over an interval (ground truth for tests).

    Example:

        slurmgpu sim truth --node gn1 --since 1764000000 --until 1764000060 --json
    """
    result = control.truth(
        _node(load_cli_config(), node), _epoch(since, "--since"), _epoch(until, "--until"), minor
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['node']} ({result['model']})")
    for g in result["gpus"]:
        click.echo(
            f"  gpu{g['minor']}: energy {g['energy_joules']:.1f} J, utilization mean "
            f"{g['utilization_mean_pct']:.1f}% max {g['utilization_max_pct']:.0f}%, "
            f"peak memory {g['memory_peak_bytes'] / control.GIB:.1f} GiB over {g['elapsed_seconds']:.1f} s"
        )
