"""`slurmgpu report` against hand-written SQL over the same store file, same run, interleaved, whole processes.

Stores of 10^4, 10^5 and 10^6 jobs over a year (bench/synth_store.py, deterministic). For each:
- `slurmgpu report --account A --since 30d` (A: the largest account) and `slurmgpu report --since 30d --by user`,
  table output, as a user runs them;
- the baseline: the `sqlite3` command-line shell running the query an admin would write by hand from the documented
  schema (jobs joined with job_gpus, grouped by user: jobs, GPU-hours allocated and used, idle GPU-hours, energy);
- for reference, the same hand-written query over the `job_usage` rollup (what the report reads).
Target (issue 5): report <= 1.2x the hand-written query and <= 1 s. Every run is checked: the report's totals equal
the hand-written query's.

    /opt/slurmgpu/bin/python bench/report_bench.py [--runs 7] [--sizes 10000,100000,1000000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth_store import generate

SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"

# What an admin writes by hand against jobs and job_gpus (docs/architecture.md: the store).
HAND_WRITTEN = """
SELECT j.user,
       count(DISTINCT j.job_id) AS jobs,
       sum(g.end_epoch - g.start_epoch) / 3600.0 AS gpu_hours,
       sum(g.utilization_mean_pct / 100.0 * (g.end_epoch - g.start_epoch)) / 3600.0 AS used_gpu_hours,
       sum(CASE WHEN g.utilization_mean_pct < 5 THEN g.end_epoch - g.start_epoch END) / 3600.0 AS idle_gpu_hours,
       sum(g.energy_joules) / 3.6e6 AS kwh
FROM jobs j JOIN job_gpus g ON g.cluster = j.cluster AND g.job_id = j.job_id
WHERE j.first_seen_epoch >= {since} {account}
GROUP BY j.user ORDER BY gpu_hours DESC;
"""
# The same over the rollup the report reads (a floor: one table, no join).
ROLLUP = """
SELECT user, sum(job_share), sum(gpu_seconds) / 3600.0, sum(used_gpu_seconds) / 3600.0,
       sum(idle_gpu_seconds) / 3600.0, sum(energy_joules) / 3.6e6
FROM job_usage WHERE end_epoch >= {since} {account}
GROUP BY user ORDER BY 3 DESC;
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed: {proc.stderr[-500:]}")
    return elapsed, proc.stdout


def sql_cmd(template: str, db: Path, account: str | None, since: float | None = None) -> list[str]:
    since = time.time() - 30 * 86400 if since is None else since
    where = f"AND {'j.' if 'j.user' in template else ''}account = '{account}'" if account else ""
    return [SQLITE3, "-readonly", "-separator", "|", str(db), template.format(since=since, account=where)]


def check_same(report_json: str, sql_out: str) -> None:
    """The report's totals and the hand-written query's sums agree (same window, same jobs, same definitions)."""
    total = json.loads(report_json)["total"]
    rows = [line.split("|") for line in sql_out.strip().splitlines()]
    sums = [sum(float(r[i] or 0) for r in rows) for i in range(1, 6)]
    mine = [
        total[k] for k in ("jobs", "gpu_hours_allocated", "gpu_hours_used", "idle_gpu_hours", "energy_kwh")
    ]
    for a, b in zip(sums, mine, strict=True):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(a)), (sums, mine)


def in_process_report(cfg: Path, account: str | None) -> float:
    """The library call behind the command (store, queries, aggregation, table), without process start-up."""
    from slurmgpu.config import load_config
    from slurmgpu.reports.render_report import render_table
    from slurmgpu.reports.sources import store_report
    from slurmgpu.store.queries import ReportFilter

    config = load_config(cfg)
    start = time.perf_counter()
    now = time.time()
    f = ReportFilter(now - 30 * 86400, now, cluster="bench", account=account)
    render_table(store_report(config, f, ("user",)))
    return time.perf_counter() - start


def in_process_sql(db: Path, account: str | None) -> float:
    import sqlite3

    start = time.perf_counter()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.execute(sql_cmd(HAND_WRITTEN, db, account)[-1]).fetchall()
    conn.close()
    return time.perf_counter() - start


def bench_size(work: Path, jobs: int, runs: int, exe: Path) -> dict[str, object]:
    db = work / f"store-{jobs}.db"
    meta_path = work / f"store-{jobs}.json"
    if not db.exists() or not meta_path.exists():
        for p in work.glob(f"store-{jobs}.db*"):
            p.unlink()
        began = time.perf_counter()
        made = generate(db, jobs)
        made["seconds"] = time.perf_counter() - began
        meta_path.write_text(json.dumps(made))
    made = json.loads(meta_path.read_text())
    account = str(made["largest_account"])
    cfg = work / f"store-{jobs}.toml"
    cfg.write_text(
        f'cluster = "bench"\n[paths]\ndatabase = "{db}"\nstate_dir = "{work}/state"\nlog_file = "{work}/state/log"\n'
    )
    env = {"PATH": "/usr/bin:/bin", "SLURMGPU_CONFIG": str(cfg), "HOME": str(work)}
    cases = {
        "account": ([str(exe), "report", "--account", account, "--since", "30d"], account),
        "by_user": ([str(exe), "report", "--since", "30d", "--by", "user"], None),
    }
    out: dict[str, object] = {"jobs": jobs, "gpu_rows": made["gpu_rows"], "store_mb": db.stat().st_size / 1e6}
    for name, (cmd, acct) in cases.items():
        timed(cmd, env)  # warm the page cache
        since = time.time() - 30 * 86400
        fixed = [c if c != "30d" else str(int(since)) for c in cmd]
        check_same(
            timed([*fixed, "--json"], env)[1], timed(sql_cmd(HAND_WRITTEN, db, acct, int(since)), env)[1]
        )
        ours, hand, floor, lib, lib_sql = [], [], [], [], []
        for _ in range(runs):
            hand.append(timed(sql_cmd(HAND_WRITTEN, db, acct), env)[0])
            ours.append(timed(cmd, env)[0])
            floor.append(timed(sql_cmd(ROLLUP, db, acct), env)[0])
            lib.append(in_process_report(cfg, acct))
            lib_sql.append(in_process_sql(db, acct))
        out[name] = {
            "report_ms": 1000 * statistics.median(ours),
            "hand_written_sql_ms": 1000 * statistics.median(hand),
            "rollup_sql_ms": 1000 * statistics.median(floor),
            "ratio": statistics.median(ours) / statistics.median(hand),
            "in_process_report_ms": 1000 * statistics.median(lib),
            "in_process_hand_written_sql_ms": 1000 * statistics.median(lib_sql),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slurmgpu-report-bench"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exe = Path(sys.executable).parent / "slurmgpu"
    args.work.mkdir(parents=True, exist_ok=True)
    os.chmod(args.work, 0o755)
    results = [bench_size(args.work, int(n), args.runs, exe) for n in args.sizes.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("whole processes (medians): slurmgpu report | sqlite3 shell with the hand-written query | ratio |")
    print("  sqlite3 shell over the rollup; in process: the report's library call | the hand-written query")
    for r in results:
        for case in ("account", "by_user"):
            c = r[case]
            assert isinstance(c, dict)
            print(
                f"{r['jobs']:>9} {case:<8} {c['report_ms']:>7.1f}ms {c['hand_written_sql_ms']:>7.1f}ms "
                f"{c['ratio']:>5.2f}x {c['rollup_sql_ms']:>7.1f}ms | "
                f"{c['in_process_report_ms']:>7.1f}ms {c['in_process_hand_written_sql_ms']:>7.1f}ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
