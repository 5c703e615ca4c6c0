"""A synthetic job store for the report benchmark: N jobs over a year, deterministic for a given seed and end time.

The store is created through `Store.open` (so it has the real schema and every migration's indexes), then filled
with `executemany` in one transaction. Jobs end uniformly over the year before `--end-epoch` (default: the last
midnight UTC), job ids grow with end time; users (Zipf-weighted) belong to one of 20 accounts; partitions hold
H100, A100 or V100 nodes; 1-8 GPUs per job, 3% two-node jobs; 15% of GPUs idle; 2% without utilization data
(accounting mode off); 1% without energy.

    /opt/slurmgpu/bin/python bench/synth_store.py --jobs 1000000 --out /tmp/bench.db
"""

from __future__ import annotations

import argparse
import random
import time
import zlib
from pathlib import Path

from slurmgpu.store.db import Store

CLUSTER = "bench"
YEAR = 365 * 86400
ACCOUNTS = [f"acct{i:02d}" for i in range(20)]
PARTITIONS = [  # name, weight, node prefix, nodes, model, memory MiB, idle W, full W
    ("gpu", 0.6, "gn", 60, "NVIDIA H100 80GB HBM3", 81559, 70.0, 700.0),
    ("gpu-a100", 0.3, "ga", 30, "NVIDIA A100-SXM4-40GB", 40960, 50.0, 400.0),
    ("debug", 0.1, "gv", 10, "Tesla V100-SXM2-32GB", 32768, 40.0, 300.0),
]
GPUS = [1, 2, 4, 8]
GPU_WEIGHTS = [0.5, 0.2, 0.2, 0.1]
MIB = 1 << 20


def last_midnight_utc() -> int:
    now = int(time.time())
    return now - now % 86400


def generate(path: Path, jobs: int, *, seed: int = 1, end_epoch: int | None = None) -> dict[str, object]:
    """Create `path` (which must not exist) with `jobs` synthetic jobs; returns what was made."""
    if path.exists():
        raise SystemExit(f"{path} exists: remove it first")
    end = last_midnight_utc() if end_epoch is None else end_epoch
    rng = random.Random(seed)
    users = [f"user{i:03d}" for i in range(200)]
    user_weights = [1.0 / (i + 1) ** 0.8 for i in range(len(users))]
    account_weights = [1.0 / (i + 1) for i in range(len(ACCOUNTS))]
    user_account = {u: rng.choices(ACCOUNTS, weights=account_weights)[0] for u in users}
    user_uid = {u: 2000 + i for i, u in enumerate(users)}
    ends = sorted(rng.uniform(end - YEAR, end) for _ in range(jobs))
    chosen_users = rng.choices(users, weights=user_weights, k=jobs)
    chosen_parts = rng.choices(range(len(PARTITIONS)), weights=[p[1] for p in PARTITIONS], k=jobs)
    chosen_gpus = rng.choices(GPUS, weights=GPU_WEIGHTS, k=jobs)
    job_rows = []
    gpu_rows = []
    for i in range(jobs):
        job_id = i + 1
        user = chosen_users[i]
        name, _, prefix, nodes, model, mem_mib, idle_w, full_w = PARTITIONS[chosen_parts[i]]
        job_end = ends[i]
        duration = min(48 * 3600.0, 60.0 + rng.expovariate(1 / 10800.0))
        job_start = job_end - duration
        job_rows.append(
            (
                CLUSTER,
                job_id,
                user,
                user_uid[user],
                user_account[user],
                name,
                None,
                None,
                None,
                None,
                job_end + 1.0,
                job_end + 1.0,
            )
        )
        two_nodes = chosen_gpus[i] == 8 and rng.random() < 0.3
        node_count = 2 if two_nodes else 1
        first = rng.randrange(nodes)
        for n in range(node_count):
            node = f"{prefix}{(first + n) % nodes + 1:03d}"
            for minor in range(chosen_gpus[i]):
                blind = rng.random() < 0.02
                idle = rng.random() < 0.15
                util = rng.uniform(0.0, 4.0) if idle else rng.uniform(10.0, 98.0)
                util_max = min(100.0, util + rng.uniform(0.0, 20.0))
                power = idle_w + (full_w - idle_w) * util / 100.0
                energy = None if rng.random() < 0.01 else power * duration
                peak = int(mem_mib * (0.02 if idle else rng.uniform(0.05, 0.95))) * MIB
                gpu_rows.append(
                    (
                        CLUSTER,
                        job_id,
                        node,
                        minor,
                        f"GPU-{zlib.crc32(f'{node}:{minor}'.encode()):08x}-0000-0000-0000-000000000000",
                        model,
                        mem_mib * MIB,
                        job_start,
                        job_end,
                        energy,
                        None if blind else util,
                        None if blind else util_max,
                        None if blind else peak,
                        None if blind else util * 0.6,
                        "none" if blind else "nvml-accounting",
                    )
                )
    store = Store.open(path)
    try:
        with store.transaction() as c:
            c.executemany(
                """INSERT INTO jobs (cluster, job_id, user, uid, account, partition, array_job_id, array_task_id,
                       het_job_id, het_job_offset, first_seen_epoch, last_update_epoch)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                job_rows,
            )
            c.executemany(
                """INSERT INTO job_gpus (cluster, job_id, node, minor, uuid, model, memory_total_bytes, start_epoch,
                       end_epoch, energy_joules, utilization_mean_pct, utilization_max_pct, memory_peak_bytes,
                       memory_utilization_mean_pct, source)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                gpu_rows,
            )
        store.conn.execute("ANALYZE")
    finally:
        store.close()
    counts: dict[str, int] = {}
    for u in chosen_users:
        counts[user_account[u]] = counts.get(user_account[u], 0) + 1
    return {
        "jobs": jobs,
        "gpu_rows": len(gpu_rows),
        "end_epoch": end,
        "largest_account": max(counts, key=lambda a: counts[a]),
        "accounts": dict(sorted(counts.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--end-epoch", type=int, default=None, help="default: the last midnight UTC")
    args = parser.parse_args()
    began = time.perf_counter()
    made = generate(args.out, args.jobs, seed=args.seed, end_epoch=args.end_epoch)
    print(
        f"{made['jobs']} jobs, {made['gpu_rows']} GPU rows in {args.out} "
        f"({args.out.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - began:.1f} s); "
        f"largest account {made['largest_account']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
