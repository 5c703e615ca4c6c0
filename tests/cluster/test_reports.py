"""Reports and the cluster-wide record on the real cluster: jobs of alice (ml-team) and bob (vision) with known
simulated loads go through the shipped prolog and epilog; the epilogs' helpers mirror each node's part into the
job's AdminComment through the real slurmdbd; reports, chargeback, capacity and idle read the store or Slurm."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurmgpu.store.mirror_codec import decode, is_ours

from .slurmgpu_cluster import SlurmGpuCluster

pytestmark = pytest.mark.cluster
METRICS = ("gpu_hours_allocated", "gpu_hours_used", "idle_gpu_hours", "energy_kwh")


class Jobs:
    def __init__(self, since: float, until: float, ids: dict[str, int]) -> None:
        self.since = str(int(since))
        self.until = str(int(until) + 1)
        self.window = ("--since", self.since, "--until", self.until)  # these jobs and no others
        self.ids = ids


@pytest.fixture(scope="module")
def jobs(slurm: SlurmGpuCluster) -> Jobs:
    """Four finished jobs, mirrored: alice 1 GPU at 80%; alice 2 GPUs, one idle; bob 1 GPU idle; bob 2 nodes."""
    slurm.reset_nodes()
    since = time.time() - 1
    ids = {
        "alice_busy": slurm.run_job("slurmgpu sim load --util 80 --mem-gib 20 --seconds 4\n", user="alice"),
        "alice_half": slurm.run_job(
            'slurmgpu sim load --util 60 --mem-gib 8 --seconds 3 --gpus "${SLURM_JOB_GPUS%%,*}"\n',
            user="alice",
            gres="gpu:2",
        ),
        "bob_idle": slurm.run_job("sleep 2\n", user="bob"),
        "bob_two_nodes": slurm.run_job(
            "srun --ntasks-per-node=1 slurmgpu sim load --util 50 --seconds 3\n", user="bob", nodes=2
        ),
    }
    until = time.time()
    for name, job in ids.items():
        slurm.wait_mirrored(job, nodes=2 if name == "bob_two_nodes" else 1)
    time.sleep(max(0.0, until + 1.5 - time.time()))  # the next job ends after the window
    return Jobs(since, until, ids)


def report(slurm: SlurmGpuCluster, *args: str, config: Path | None = None) -> Any:
    proc = slurm.slurmgpu_with(config or slurm.config, "report", *args)
    return proc.stdout


def test_the_record_round_trips_through_the_accounting_database(slurm: SlurmGpuCluster, jobs: Jobs) -> None:
    job = jobs.ids["alice_busy"]
    text = slurm.admin_comment(job)
    assert text.startswith("sg1:") and text == text.lower() and len(text) < 400
    record = decode(text)
    local = slurm.job_json(job)
    assert (record.user, record.account, record.partition, record.job_id) == ("alice", "ml-team", "gpu", job)
    (part,) = record.parts
    (mine,) = local["gpus"]
    (theirs,) = part.gpus
    assert (part.node, theirs.minor, theirs.model) == (mine["node"], mine["minor"], mine["model"])
    assert theirs.utilization_mean_pct == pytest.approx(mine["utilization_mean_pct"], abs=0.005)
    assert theirs.energy_joules == pytest.approx(mine["energy_kwh"] * 3.6e6, abs=0.05)
    assert theirs.memory_peak_bytes == mine["memory_peak_bytes"] == 20 << 30


def test_a_job_on_all_three_nodes_ends_with_a_complete_record_every_time(slurm: SlurmGpuCluster) -> None:
    """Three epilogs finish at the same moment and merge into one AdminComment: repeated, every record complete."""
    for _ in range(5):
        job = slurm.run_job(
            "srun --ntasks-per-node=1 slurmgpu sim load --util 40 --seconds 2\n",
            user="alice",
            gres="gpu:2",
            nodes=3,
        )
        record = slurm.wait_mirrored(job, nodes=3, timeout=120)
        assert record.nodes == ("gn1", "gn2", "gn3")
        assert [len(p.gpus) for p in record.parts] == [2, 2, 2]
        assert all(g.utilization_max_pct == 40.0 for p in record.parts for g in p.gpus)
        time.sleep(4)  # a late writer (a stale merge) would show now
        assert decode(slurm.admin_comment(job)).nodes == ("gn1", "gn2", "gn3")
    log = slurm.hook_log()
    assert "in AdminComment" in log and "giving up" not in log


def test_report_totals_are_the_sum_of_the_jobs_and_all_formats_agree(
    slurm: SlurmGpuCluster, jobs: Jobs
) -> None:
    data = json.loads(report(slurm, *jobs.window, "--json"))
    per_job = [slurm.job_json(j) for j in jobs.ids.values()]
    total = data["total"]
    assert total["jobs"] == len(per_job) and total["jobs_without_telemetry"] == 0
    assert total["gpu_hours_allocated"] == pytest.approx(sum(j["gpu_hours_allocated"] for j in per_job))
    assert total["gpu_hours_used"] == pytest.approx(sum(j["gpu_hours_used"] for j in per_job))
    assert total["energy_kwh"] == pytest.approx(sum(j["energy_kwh"] for j in per_job))
    idle = sum(g["elapsed_seconds"] for j in per_job for g in j["gpus"] if g["idle"]) / 3600
    assert total["idle_gpu_hours"] == pytest.approx(idle) and idle > 0
    users = {g["user"]: g for g in data["groups"]}
    assert set(users) == {"alice", "bob"} and users["alice"]["jobs"] == 2 and users["bob"]["jobs"] == 2
    assert users["bob"]["idle_gpu_hours"] > 0 and users["alice"]["gpu_efficiency_pct"] > 30
    accounts = {
        g["account"]: g
        for g in json.loads(report(slurm, *jobs.window, "--by", "account", "--json"))["groups"]
    }
    assert set(accounts) == {"ml-team", "vision"}
    for m in METRICS:
        assert sum(a[m] for a in accounts.values()) == pytest.approx(total[m])
    models = json.loads(report(slurm, *jobs.window, "--by", "gpu-model", "--json"))
    assert sum(g["gpu_hours_allocated"] for g in models["groups"]) == pytest.approx(
        total["gpu_hours_allocated"]
    )
    rows = list(csv.DictReader(io.StringIO(report(slurm, *jobs.window, "--csv"))))
    assert [r["row"] for r in rows] == ["group", "group", "total"]
    for r in rows:
        src = total if r["row"] == "total" else users[r["user"]]
        for m in (*METRICS, "jobs"):
            assert float(r[m]) == pytest.approx(src[m])
    table = report(slurm, *jobs.window)
    lines = {
        line.split()[0]: line.split()
        for line in table.splitlines()
        if line.split()[:1] in (["alice"], ["bob"], ["TOTAL"])
    }
    for name, src in (("alice", users["alice"]), ("bob", users["bob"]), ("TOTAL", total)):
        assert int(lines[name][1]) == src["jobs"]
        assert float(lines[name][2]) == pytest.approx(src["gpu_hours_allocated"], abs=5e-5)
        assert float(lines[name][3]) == pytest.approx(src["gpu_hours_used"], abs=5e-5)
    worst = data["top_jobs"][0]
    assert worst["job_id_raw"] in (jobs.ids["bob_idle"], jobs.ids["alice_half"])


def test_slurm_accounting_on_an_empty_store_gives_the_same_numbers(
    slurm: SlurmGpuCluster, jobs: Jobs, tmp_path: Path
) -> None:
    empty = slurm.root / "empty-store"
    empty.mkdir(exist_ok=True)
    empty.chmod(0o755)
    login = slurm.config_variant("login-node", database=empty / "slurmgpu.db")
    local = json.loads(report(slurm, *jobs.window, "--json"))
    remote = json.loads(report(slurm, *jobs.window, "--json", "--source", "slurmdbd", config=login))
    assert remote["source"] == "slurmdbd" and not remote["notes"]
    # the same numbers as the table shows them (GPU-hours to 4 decimals, percentages to 1): the record keeps
    # times to 0.01 s, which on these few-second jobs moves a ratio in its fourth significant digit
    for m in METRICS:
        assert remote["total"][m] == pytest.approx(local["total"][m], abs=5e-5), m
    for m in ("memory_efficiency_pct", "gpu_efficiency_pct"):
        assert remote["total"][m] == pytest.approx(local["total"][m], abs=0.05), m
    assert (
        remote["total"]["jobs"] == local["total"]["jobs"]
        and remote["total"]["gpus"] == local["total"]["gpus"]
    )
    for a, b in zip(
        sorted(local["groups"], key=lambda g: g["user"]),
        sorted(remote["groups"], key=lambda g: g["user"]),
        strict=True,
    ):
        assert a["user"] == b["user"] and a["gpu_hours_allocated"] == pytest.approx(
            b["gpu_hours_allocated"], abs=1e-4
        )
    # a login node without any store: `slurmgpu job` of a two-node job reads the record from Slurm
    job = jobs.ids["bob_two_nodes"]
    summary = json.loads(slurm.slurmgpu_with(login, "job", str(job), "--json").stdout)
    assert len(summary["nodes"]) == 2 and summary["gpus_allocated"] == 2
    assert summary["gpu_hours_used"] == pytest.approx(slurm.job_json(job)["gpu_hours_used"], abs=1e-4)


def test_bob_sees_only_his_own_jobs(slurm: SlurmGpuCluster, jobs: Jobs) -> None:
    alice_job, bob_job = jobs.ids["alice_busy"], jobs.ids["bob_idle"]
    refused = slurm.slurmgpu_with(slurm.config, "job", str(alice_job), user="bob", check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert f"job {alice_job} is another user's job" in refused.stderr and "Traceback" not in refused.stderr
    own = slurm.slurmgpu_with(
        slurm.config, "job", str(bob_job), "--json", user="bob"
    )  # a user reads root's store
    assert json.loads(own.stdout)["user"] == "bob"
    mine = json.loads(slurm.slurmgpu_with(slurm.config, "report", *jobs.window, "--json", user="bob").stdout)
    assert {g["user"] for g in mine["groups"]} == {"bob"} and mine["total"]["jobs"] == 2
    assert all(j["user"] == "bob" for j in mine["top_jobs"])
    other = slurm.slurmgpu_with(slurm.config, "report", "--user", "alice", user="bob", check=False)
    assert other.returncode == 1 and "only see your own jobs" in other.stderr
    remote = slurm.slurmgpu_with(
        slurm.config, "report", *jobs.window, "--source", "slurmdbd", "--json", user="bob"
    )
    assert {g["user"] for g in json.loads(remote.stdout)["groups"]} == {"bob"}
    cap = slurm.slurmgpu_with(slurm.config, "capacity", user="bob", check=False)
    assert cap.returncode == 1 and "only root" in cap.stderr
    charge = slurm.slurmgpu_with(
        slurm.config, "chargeback", "--month", time.strftime("%Y-%m"), "--json", user="bob"
    )
    assert {line["user"] for line in json.loads(charge.stdout)["lines"]} == {"bob"}


def test_another_tools_admincomment_is_never_replaced(slurm: SlurmGpuCluster) -> None:
    job = slurm.submit("sleep 5\n", user="alice")
    deadline = time.monotonic() + 30
    while slurm.cluster.job_state(job) != "RUNNING":
        assert time.monotonic() < deadline, slurm.cluster.show_job(job)
        time.sleep(0.2)
    theirs = "JS1:H4sIAAAAAAAAA+MCAJMG1zIDAAAA"  # a jobstats-style payload, set while the job runs
    slurm.cluster.run(["scontrol", "update", f"jobid={job}", f"admincomment={theirs}"], check=True)
    assert slurm.cluster.wait_job(job) == "COMPLETED"
    deadline = time.monotonic() + 30
    while "another tool's content" not in slurm.hook_log():
        assert time.monotonic() < deadline, slurm.hook_log()[-2000:]
        time.sleep(0.5)
    assert slurm.admin_comment(job) == theirs
    import sqlite3

    db = sqlite3.connect(str(slurm.root / "slurmgpu" / "state" / "slurmgpu.db"))
    notes = db.execute("SELECT kind, detail FROM job_notes WHERE job_id = ?", (job,)).fetchall()
    db.close()
    assert notes and notes[0][0] == "admincomment-foreign" and "JS1" in notes[0][1]
    assert slurm.job_json(job)["gpus"]  # our record is in the store all the same


def test_chargeback_prices_every_line_with_the_rate_card(slurm: SlurmGpuCluster, jobs: Jobs) -> None:
    priced = slurm.config_variant(
        "rates",
        extra='\n[reports]\ncurrency = "EUR"\ngpu_hour_rate = 3.0\nenergy_price_per_kwh = 0.25\n'
        '[reports.gpu_model_rates]\n"V100" = 1.0\n',
    )
    month = time.strftime("%Y-%m", time.localtime(float(jobs.since)))
    rows = list(
        csv.DictReader(
            io.StringIO(slurm.slurmgpu_with(priced, "chargeback", "--month", month, "--csv").stdout)
        )
    )
    keys = {(r["account"], r["user"]) for r in rows}
    assert {("ml-team", "alice"), ("vision", "bob")} <= keys
    data = json.loads(slurm.slurmgpu_with(priced, "chargeback", "--month", month, "--json").stdout)
    for line in data["lines"]:
        assert line["energy_cost"] == pytest.approx(line["energy_kwh"] * 0.25)
        assert (
            line["gpu_hours_allocated"] * 1.0 - 1e-9
            <= line["gpu_cost"]
            <= line["gpu_hours_allocated"] * 3.0 + 1e-9
        )
        assert (
            line["cost"] == pytest.approx(line["gpu_cost"] + line["energy_cost"])
            and line["currency"] == "EUR"
        )
    assert sum(line["cost"] for line in data["lines"]) == pytest.approx(data["total"]["cost"])
    table = slurm.slurmgpu_with(priced, "chargeback", "--month", month).stdout
    assert "TOTAL" in table and "Rates: default 3 EUR/GPU-hour" in table


def test_capacity_counts_slurms_gpus_and_the_jobs_allocation(slurm: SlurmGpuCluster, jobs: Jobs) -> None:
    data = json.loads(slurm.slurmgpu("capacity", "--days", "2", "--json").stdout)
    assert data["gpus_total"] == 12 and data["nodes"] == 3 and len(data["days"]) == 2
    today = data["days"][-1]
    assert today["capacity_gpu_hours"] == pytest.approx(12 * today["hours"], rel=1e-6)
    ours = 0.0
    for job in jobs.ids.values():
        gpus = int(slurm.cluster.job_field(job, "AllocTRES").split("gres/gpu=")[1].split(",")[0])
        ours += gpus * int(slurm.cluster.job_field(job, "ElapsedRaw")) / 3600
    assert sum(d["allocated_gpu_hours"] for d in data["days"]) >= ours - 1e-6
    assert data["queue_wait"]["jobs"] >= len(jobs.ids)
    text = slurm.slurmgpu("capacity", "--days", "2").stdout
    assert "GPU capacity: 12 GPUs on 3 nodes" in text and "Queue wait of GPU jobs" in text


@pytest.fixture
def agent_on_gn2(slurm: SlurmGpuCluster) -> Iterator[None]:
    log = (slurm.root / "reports-agent-gn2.log").open("ab")
    proc = subprocess.Popen(
        [str(slurm.exe), "agent", "--node", "gn2", "--interval", "1", "--listen", "127.0.0.1:0"],
        env=slurm.env,
        stdout=log,
        stderr=log,
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_idle_lists_a_running_job_with_an_idle_gpu_and_notifies(
    slurm: SlurmGpuCluster, agent_on_gn2: None, tmp_path: Path
) -> None:
    script = 'slurmgpu sim load --util 70 --seconds 60 --gpus "${SLURM_JOB_GPUS%%,*}"\n'
    job = slurm.submit(script, user="bob", gres="gpu:2", nodelist="gn2")
    marker = slurm.root / "idle-notified"
    notify = f"/bin/sh -c 'echo \"$0 $1 $2\" >> {marker}' {{user}} {{job_id}} {{idle_gpus}}"
    try:
        deadline = time.monotonic() + 60
        found: list[dict[str, Any]] = []
        while not found:
            assert time.monotonic() < deadline, slurm.hook_log()[-2000:]
            time.sleep(1)
            out = json.loads(slurm.slurmgpu("idle", "--minutes", "0.1", "--json").stdout)
            found = [j for j in out["jobs"] if j["job_id_raw"] == job]
        (entry,) = found
        assert (entry["user"], entry["account"], entry["gpus"], entry["idle_gpu_count"]) == (
            "bob",
            "vision",
            2,
            1,
        )
        assert entry["idle_seconds"] >= 6 and not entry["stale"]
        table = slurm.slurmgpu("idle", "--minutes", "0.1", "--notify", notify).stdout
        assert str(job) in table and "1 of 2" in table
        (line,) = [line for line in marker.read_text().splitlines() if line.split()[1] == str(job)]
        assert line.startswith("bob ") and line.split()[2].startswith("gn2:gpu")
        assert slurm.cluster.job_state(job) == "RUNNING"  # notified, not cancelled
        mine = slurm.slurmgpu_with(slurm.config, "idle", "--minutes", "0.1", "--json", user="alice")
        assert all(j["user"] == "alice" for j in json.loads(mine.stdout)["jobs"])
    finally:
        slurm.cluster.run(["scancel", str(job)])
        slurm.cluster.wait_job(job, timeout=60)


def test_mirror_keeps_the_epilog_fast_and_records_each_job_once(slurm: SlurmGpuCluster, jobs: Jobs) -> None:
    log = slurm.hook_log()
    for job in jobs.ids.values():
        assert is_ours(slurm.admin_comment(job))
        assert f"job {job}: GPU record not mirrored" not in log
    done = [line for line in log.splitlines() if "epilog[" in line and " done in " in line]
    times = [float(line.split(" done in ")[1].split(" s")[0]) for line in done]
    # the helper, not the epilog, talks to slurmdbd; on failure, show what the slow epilog logged
    slow = [line.split(" debug:")[0].split()[-1] for line, t in zip(done, times, strict=True) if t >= 2.0]
    assert times and not slow, [line for line in log.splitlines() if any(s + " " in line for s in slow)]


def test_concurrent_writers_without_stagger_end_complete_through_the_real_slurmdbd(
    slurm: SlurmGpuCluster,
) -> None:
    """The epilogs above are staggered by node rank and never collided. Here three writers for one job start at the
    same instant against the real sacct, sacctmgr and slurmdbd (read-merge-write races happen): reading back and
    rewriting still ends with all three parts, every time."""
    import multiprocessing
    import random

    from slurmgpu.config import load_config
    from slurmgpu.slurm.admincomment import TokenBucket, mirror_part
    from slurmgpu.slurm.commands import Slurm
    from slurmgpu.store.mirror_codec import record_for_node
    from slurmgpu.store.records import JobGpuUsage, JobMeta

    def writer(job: int, node: str, barrier: Any, results: Any) -> None:
        config = load_config(slurm.config)
        meta = JobMeta("testgpu", job, "alice", None, "ml-team", "gpu", None, None, None, None, 0.0, 0.0)
        now = time.time()
        gpus = [
            JobGpuUsage(
                node,
                m,
                None,
                "H100",
                80 << 30,
                now - 60,
                now,
                1e4,
                50.0,
                60.0,
                1 << 30,
                10.0,
                "nvml-accounting",
            )
            for m in range(2)
        ]
        bucket = TokenBucket(slurm.root / f"race-{node}.bucket", 6000, 100, sleep=time.sleep, clock=time.time)
        barrier.wait()
        outcome = mirror_part(
            Slurm(Path("/usr/bin"), str(slurm.cluster.slurm_conf), 30.0),
            record_for_node(meta, node, gpus),
            multi_node=True,
            idle_pct=5.0,
            max_chars=4000,
            max_attempts=10,
            settle_seconds=config.reports.mirror_settle_seconds,
            bucket=bucket,
            sleep=time.sleep,
            rng=random.Random(),
            log=lambda level, msg: None,
        )
        results.put((node, outcome.status, outcome.writes))

    ctx = multiprocessing.get_context("fork")
    total_writes = 0
    for _ in range(3):
        job = slurm.run_job("true\n", user="alice", gres=None)  # a finished job with an empty AdminComment
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=writer, args=(job, f"rn{n}", barrier, results)) for n in (1, 2, 3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(180)
        outcomes = [results.get(timeout=5) for _ in procs]
        assert all(status == "done" for _, status, _ in outcomes), outcomes
        total_writes += sum(w for _, _, w in outcomes)
        record = decode(slurm.admin_comment(job))
        assert record.nodes == ("rn1", "rn2", "rn3") and sum(len(p.gpus) for p in record.parts) == 6
    assert total_writes >= 9  # each writer wrote at least once; more when a race dropped a part
