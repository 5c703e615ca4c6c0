"""Prolog hook cost on a node with 8 simulated GPUs, against `python -c pass` with the same interpreter.

Both are measured in the same run, interleaved, as whole processes (what slurmd pays before every job):
the prolog reads all 8 GPUs through the NVML gateway (simulated), runs the health gate, writes owner files and
baselines to the SQLite store. Target (issue 2): ratio <= 1.5x; we report what we reach.

    /opt/slurmgpu/bin/python bench/prolog_bench.py [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What any Python prolog in our style pays before doing anything: the standard modules the hook needs.
STDLIB_FLOOR = "import dataclasses, pathlib, tomllib, json, threading, fcntl"


def setup(root: Path, gpus: int) -> dict[str, str]:
    cfg = root / "slurmgpu.toml"
    cfg.write_text(f"""backend = "simulated"
[paths]
state_dir = "{root}/state"
run_dir = "{root}/run/{{node}}"
database = "{root}/state/slurmgpu.db"
log_file = "{root}/state/slurmgpu.log"
[simulator]
state_dir = "{root}/sim"
gpus_per_node = {gpus}
""")
    return {
        "PATH": "/usr/bin:/bin",
        "SLURMGPU_CONFIG": str(cfg),
        "SLURMD_NODENAME": "gn1",
        "SLURM_JOB_USER": "alice",
        "SLURM_JOB_UID": "1001",
        "SLURM_JOB_ACCOUNT": "ml-team",
        "SLURM_JOB_PARTITION": "gpu",
        "SLURM_CLUSTER_NAME": "bench",
        "SLURM_JOB_GPUS": ",".join(str(i) for i in range(gpus)),
    }


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.decode()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exe = Path(sys.executable).parent / "slurmgpu"
    with tempfile.TemporaryDirectory() as tmp:
        env = setup(Path(tmp), args.gpus)
        timed([str(exe), "hook", "prolog"], {**env, "SLURM_JOB_ID": "1"})  # creates and migrates the store
        prolog, baseline, floor = [], [], []
        for i in range(args.runs):
            baseline.append(timed([sys.executable, "-c", "pass"], env))
            floor.append(timed([sys.executable, "-c", STDLIB_FLOOR], env))
            prolog.append(timed([str(exe), "hook", "prolog"], {**env, "SLURM_JOB_ID": str(100 + i)}))
        log = (Path(tmp) / "state" / "slurmgpu.log").read_text()
        assert "error" not in log, log  # every run must have been a healthy, complete prolog
        rows = len(os.listdir(Path(tmp) / "run" / "gn1" / "gpu")) - 1  # minus the lock file
        assert rows == args.gpus
    result = {
        "gpus": args.gpus,
        "runs": args.runs,
        "python_pass_median_ms": 1000 * statistics.median(baseline),
        "prolog_median_ms": 1000 * statistics.median(prolog),
        "prolog_p90_ms": 1000 * sorted(prolog)[int(0.9 * len(prolog))],
    }
    result["stdlib_floor_median_ms"] = 1000 * statistics.median(floor)
    result["ratio"] = result["prolog_median_ms"] / result["python_pass_median_ms"]
    result["floor_ratio"] = result["stdlib_floor_median_ms"] / result["python_pass_median_ms"]
    if args.json:
        print(json.dumps(result))
    else:
        print(f"python -c pass  median {result['python_pass_median_ms']:.1f} ms")
        print(
            f"prolog ({args.gpus} GPUs) median {result['prolog_median_ms']:.1f} ms, p90 {result['prolog_p90_ms']:.1f} ms"
        )
        print(
            f"stdlib floor    median {result['stdlib_floor_median_ms']:.1f} ms ({result['floor_ratio']:.2f}x)"
        )
        print(f"ratio {result['ratio']:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
