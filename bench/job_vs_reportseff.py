"""`slurmgpu job N` against `reportseff N` (PyPI) on the real test cluster, same jobs, same run, interleaved.

Both are whole commands as a user runs them: reportseff asks sacct for the job's efficiency; slurmgpu job asks
sacct for the job's state and reads its GPU record from the store. Target (issue 2): ratio <= 1.0x.

    /opt/slurmgpu/bin/python bench/job_vs_reportseff.py [--runs 20]    (root: it starts a private Slurm)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.slurmgpu_cluster import start_cluster


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.decode()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reportseff = Path(sys.executable).parent / "reportseff"
    if not reportseff.exists():
        raise SystemExit(f"{reportseff} is missing: pip install reportseff")
    running = start_cluster(prefix="slurmgpu-bench-")
    try:
        job = running.run_job(
            "slurmgpu sim load --util 70 --mem-gib 10 --seconds 2\n", user="alice", gres="gpu:2"
        )
        env = {**running.env, "PATH": "/usr/bin:/bin"}
        ours, theirs = [], []
        for _ in range(args.runs):
            theirs.append(timed([str(reportseff), str(job)], env))
            ours.append(timed([str(running.exe), "job", str(job)], env))
    finally:
        running.cluster.stop()
        shutil.rmtree(running.root, ignore_errors=True)
    result = {
        "runs": args.runs,
        "reportseff_median_ms": 1000 * statistics.median(theirs),
        "slurmgpu_job_median_ms": 1000 * statistics.median(ours),
    }
    result["ratio"] = result["slurmgpu_job_median_ms"] / result["reportseff_median_ms"]
    if args.json:
        print(json.dumps(result))
    else:
        print(f"reportseff N     median {result['reportseff_median_ms']:.1f} ms")
        print(f"slurmgpu job N   median {result['slurmgpu_job_median_ms']:.1f} ms")
        print(f"ratio {result['ratio']:.2f}x (target <= 1.0x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
