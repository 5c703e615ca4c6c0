"""What mirroring job records into Slurm's AdminComment adds to the epilog, on the real test cluster.

Single-GPU jobs run alternately with `[reports] mirror = "off"` and `"background"` (the default), same run. Each
epilog logs its own duration ("done in"); the detached helper logs when the node's part is in the AdminComment and
how many slurmdbd calls it took. Also measured: one sacct and one sacctmgr call on this cluster.
Target (issue 5): the epilog's added time stays small; slurmdbd calls per job bounded.

    /opt/slurmgpu/bin/python bench/mirror_bench.py [--jobs 10]    (root: it starts a private Slurm)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.slurmgpu_cluster import start_cluster


def set_mirror(config: Path, mode: str) -> None:
    text = re.sub(r"\n\[reports\]\nmirror = \"\w+\"\n", "\n", config.read_text())
    config.write_text(text + f'\n[reports]\nmirror = "{mode}"\n')


def epilog_seconds(log: str, job: int) -> float:
    (value,) = re.findall(rf"epilog\[\d+\] debug: job {job} done in ([0-9.]+) s", log)
    return float(value)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    running = start_cluster(prefix="slurmgpu-bench-mirror-")
    off: list[float] = []
    background: list[float] = []
    helper: list[float] = []
    calls: list[int] = []
    try:
        env = running.env
        for _ in range(args.jobs):
            for mode, sink in (("off", off), ("background", background)):
                set_mirror(running.config, mode)
                job = running.run_job("slurmgpu sim load --util 50 --seconds 1\n", user="alice")
                ended = time.time()
                if mode == "background":
                    running.wait_mirrored(job)
                    pattern = rf"job {job}: GPU record of \w+ in AdminComment \(\d+ write\(s\), (\d+) call"
                    deadline = time.monotonic() + 30
                    while not re.findall(pattern, running.hook_log()) and time.monotonic() < deadline:
                        time.sleep(0.1)
                    helper.append(time.time() - ended)
                    calls.append(int(re.findall(pattern, running.hook_log())[0]))
                sink.append(epilog_seconds(running.hook_log(), job))
        sacct, sacctmgr = [], []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run(
                ["sacct", "-X", "-n", "-P", "-j", str(job), "-o", "JobIDRaw,AdminComment"],
                env=env,
                check=True,
                capture_output=True,
            )
            sacct.append(time.perf_counter() - start)
            comment = running.admin_comment(job)
            start = time.perf_counter()
            subprocess.run(
                [
                    "sacctmgr",
                    "-i",
                    "modify",
                    "job",
                    "where",
                    f"jobid={job}",
                    "set",
                    f"AdminComment={comment}",
                ],
                env=env,
                check=False,
                capture_output=True,
            )
            sacctmgr.append(time.perf_counter() - start)
    finally:
        running.cluster.stop()
        shutil.rmtree(running.root, ignore_errors=True)
    result = {
        "jobs": args.jobs,
        "epilog_off_median_ms": 1000 * statistics.median(off),
        "epilog_background_median_ms": 1000 * statistics.median(background),
        "epilog_added_ms": 1000 * (statistics.median(background) - statistics.median(off)),
        "helper_done_after_median_s": statistics.median(helper),
        "slurmdbd_calls_per_job": sorted(set(calls)),
        "sacct_ms": 1000 * statistics.median(sacct),
        "sacctmgr_ms": 1000 * statistics.median(sacctmgr),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:32s} {v if not isinstance(v, float) else round(v, 1)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
