"""The demo: a real local Slurm (3 nodes x 4 simulated GPUs: H100s on gn1 and gn2, V100s on gn3) running
slurmgpu's prolog and epilog, a few GPU jobs by alice and bob, what `slurmgpu job` says about each, and
`slurmgpu report` over them. Everything runs under /tmp and is stopped at the end."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.slurmgpu_cluster import start_cluster

JOBS = [
    ("alice", "gpu:1", 1, "train-resnet", "slurmgpu sim load --util 85 --mem-gib 28 --seconds 6\n"),
    (
        "bob",
        "gpu:2",
        1,
        "eval-two-gpus",
        'first="${SLURM_JOB_GPUS%%,*}"\nslurmgpu sim load --util 70 --mem-gib 12 --seconds 5 --gpus "$first"\n',
    ),
    (
        "alice",
        "gpu:1",
        2,
        "ddp-two-nodes",
        "srun --ntasks-per-node=1 slurmgpu sim load --util 45 --mem-gib 6 --seconds 5\n",
    ),
]


def main() -> int:
    print(
        "starting a local Slurm: MariaDB, munge, slurmdbd, slurmctld, slurmd gn1..gn3 (4 simulated GPUs each)"
    )
    running = start_cluster(prefix="slurmgpu-demo-")
    try:
        c = running.cluster
        print(f"cluster up in {c.start_seconds:.1f} s; config {running.config}\n")
        print(running.slurmgpu("config", "show").stdout.split("[simulator]")[0])
        submitted = []
        for user, gres, nodes, name, script in JOBS:
            job = running.submit(script, user=user, gres=gres, nodes=nodes, extra_args=[f"--job-name={name}"])
            print(f"submitted job {job} ({name}) as {user}: --gres={gres}, {nodes} node(s)")
            submitted.append(job)
        for job in submitted:
            state = c.wait_job(job, timeout=120)
            print(f"\n$ slurmgpu job {job}      # Slurm says: {state}")
            print(running.slurmgpu("job", str(job)).stdout)
        print("$ slurmgpu report --since 1h --by user")
        print(running.slurmgpu("report", "--since", "1h", "--by", "user").stdout)
        print("$ slurmgpu report --account ml-team --since 1h --source slurmdbd   # from Slurm accounting")
        time.sleep(3)  # the epilogs' AdminComment records land a few seconds after the jobs
        print(
            running.slurmgpu("report", "--account", "ml-team", "--since", "1h", "--source", "slurmdbd").stdout
        )
        print(f"the job store is {running.root}/slurmgpu/state/slurmgpu.db; hook log:")
        print("".join(running.hook_log().splitlines(keepends=True)[-6:]))
        return 0
    finally:
        running.cluster.stop()
        shutil.rmtree(running.root, ignore_errors=True)
        print("cluster stopped")


if __name__ == "__main__":
    raise SystemExit(main())
