"""Reports end to end through the CLI (CliRunner, a real store, a fake Slurm), and their pure parts: rate card,
windows, host lists, sacct/squeue parsing, the slurmdbd source, capacity maths, idle detection, access control."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import pwd
import select
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from tests.conftest import write_config
from tests.unit.fake_slurm import FakeSlurm

from slurmgpu import access
from slurmgpu.cli import reports as cli_reports
from slurmgpu.cli.app import cli
from slurmgpu.collection.aggregate import JobGpuAggregate, Point
from slurmgpu.config import ReportsConfig, parse_config
from slurmgpu.errors import InputError, SlurmError
from slurmgpu.reports.aggregate import RateCard
from slurmgpu.reports.capacity import capacity, daily, fit_line, percentile, queue_wait
from slurmgpu.reports.chargeback import month_window
from slurmgpu.reports.idle import find_idle, idle_since, notify_command
from slurmgpu.reports.sources import usages_from_accounting
from slurmgpu.reports.window import parse_when, window
from slurmgpu.slurm.accounting import (
    DELIMITER,
    REPORT_FIELDS,
    AccountingJob,
    NodeGpus,
    RunningJob,
    parse_accounting,
    parse_gpu_nodes,
    parse_running,
)
from slurmgpu.slurm.env import JobContext
from slurmgpu.slurm.hostlist import expand
from slurmgpu.store.db import Store
from slurmgpu.store.mirror_codec import encode, fit, merge, record_for_node
from slurmgpu.store.queries import GROUP_KEYS, ReportFilter
from slurmgpu.store.records import JobGpuUsage, JobMeta

H100 = "NVIDIA H100 80GB HBM3"

# -- pure pieces ----------------------------------------------------------------------------------------------------


def test_cli_group_keys_are_the_stores() -> None:
    assert cli_reports.GROUP_KEYS == GROUP_KEYS


def test_rate_card_precedence() -> None:
    rates = RateCard("EUR", 1.0, (("gpu", 2.0), ("debug", 0.0)), (("H100", 4.0), ("H100 80GB", 5.0)), 0.3)
    assert rates.rate("gpu", H100) == 5.0  # the model wins; the longest match among models
    assert rates.rate("gpu", "NVIDIA A100-SXM4-40GB") == 2.0  # then the partition
    assert rates.rate("debug", "Tesla V100") == 0.0
    assert rates.rate("other", "") == 1.0  # then the default
    assert rates.configured and not RateCard().configured
    cfg = parse_config("[reports]\ncurrency = 'EUR'\n[reports.gpu_model_rates]\nH100 = 4\n")
    assert RateCard.from_config(cfg.reports).rate("x", H100) == 4.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[reports]\nmirror = 'sometimes'\n", "reports.mirror"),
        ("[reports.partition_rates]\ngpu = -1\n", "reports.partition_rates.gpu"),
        ("[reports]\nadmin_groups = 'wheel'\n", "reports.admin_groups"),
        ("[reports]\ncapacity_threshold_pct = 0\n", "reports.capacity_threshold_pct"),
        ("[reports]\nmirror_max_chars = 10\n", "reports.mirror_max_attempts"),
        ("[reports]\nrate = 1\n", "reports.rate"),
    ],
)
def test_bad_reports_config_names_the_key(text: str, key: str) -> None:
    with pytest.raises(Exception, match=key.replace(".", r"\.")):
        parse_config(text)


def test_windows_and_months() -> None:
    now = 1_795_574_000.0
    assert parse_when("30d", now) == now - 30 * 86400
    assert parse_when("12h", now) == now - 12 * 3600 and parse_when("2w", now) == now - 14 * 86400
    assert parse_when("now", now) == now and parse_when(str(int(now)), now) == int(now)
    assert parse_when("2026-11-01", now) == time.mktime((2026, 11, 1, 0, 0, 0, 0, 0, -1))
    assert time.localtime(parse_when("today", now))[3:6] == (0, 0, 0)
    with pytest.raises(InputError, match="--since"):
        parse_when("yesterday-ish", now)
    with pytest.raises(InputError, match="must be after"):
        window("1d", "2d", now)
    name, start, end = month_window("2026-12")
    assert (
        name == "2026-12"
        and time.localtime(end)[:3] == (2027, 1, 1)
        and time.localtime(start)[:3] == (2026, 12, 1)
    )
    assert month_window(None, now=time.mktime((2026, 1, 15, 12, 0, 0, 0, 0, -1)))[0] == "2025-12"
    with pytest.raises(InputError, match="YYYY-MM"):
        month_window("2026-13")


def test_host_lists() -> None:
    assert expand("gn[1-3]") == ["gn1", "gn2", "gn3"]
    assert expand("gpu[01-03,10],login1") == ["gpu01", "gpu02", "gpu03", "gpu10", "login1"]
    assert expand("r[1-2]-n[1-2]") == ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]
    assert expand("None assigned") == [] and expand("") == []
    for bad in ("gn[1-", "gn[3-1]", "gn[a-b]", "gn1]"):
        with pytest.raises(SlurmError):
            expand(bad)


def sacct_line(**fields: str) -> str:
    base = {
        "JobIDRaw": "1001",
        "JobID": "1001",
        "User": "alice",
        "Account": "ml-team",
        "Partition": "gpu",
        "State": "COMPLETED",
        "Submit": "1795573800",
        "Start": "1795573834",
        "End": "1795573934",
        "ElapsedRaw": "100",
        "NodeList": "gn1",
        "AllocTRES": "billing=2,cpu=2,gres/gpu=2,node=1",
        "AdminComment": "",
        "JobName": "train",
    }
    base.update(fields)
    return DELIMITER.join(base[f] for f in REPORT_FIELDS)


def test_sacct_report_lines_keep_free_text_apart() -> None:
    (job,) = parse_accounting(sacct_line(AdminComment=f"other{DELIMITER}tool", JobName="n|a|m|e"))
    assert job.admin_comment == f"other{DELIMITER}tool" and job.name == "n|a|m|e"
    (job,) = parse_accounting(sacct_line(State="CANCELLED by 0", End="Unknown", AllocTRES="cpu=1"))
    assert job.state == "CANCELLED" and job.end_epoch_seconds is None and job.alloc_gpus is None and job.final
    (job,) = parse_accounting(sacct_line(Start="2026-11-25T02:30:34"))
    assert job.start_epoch_seconds == time.mktime((2026, 11, 25, 2, 30, 34, 0, 0, -1))
    with pytest.raises(SlurmError, match="expected"):
        parse_accounting("1001|x")
    with pytest.raises(SlurmError):
        parse_accounting(sacct_line(JobIDRaw="abc"))
    running = parse_running(DELIMITER.join(["1002", "1002", "bob", "vision", "gpu", "gn1", "1795574662"]))
    assert running == [RunningJob(1002, "1002", "bob", "vision", "gpu", "gn1", 1795574662.0)]
    nodes = parse_gpu_nodes(
        "\n".join(
            DELIMITER.join(x)
            for x in [
                ("gn1", "gpu:4", "mixed"),
                ("gn1", "gpu:4", "mixed"),
                ("gn3", "gpu:h100:8(S:0-1)", "drained*"),
            ]
        )
    )
    assert nodes == [NodeGpus("gn1", 4, "mixed"), NodeGpus("gn3", 8, "drained")] and not nodes[1].in_service


def gpu(
    node: str, minor: int, util: float | None = 50.0, start: float = 1795573834.0, end: float = 1795573934.0
) -> JobGpuUsage:
    return JobGpuUsage(
        node, minor, None, H100, 80 << 30, start, end, 1000.0, util, util, 1 << 30, 1.0, "nvml-accounting"
    )


def meta(job_id: int, user: str = "alice") -> JobMeta:
    return JobMeta("testgpu", job_id, user, 1001, "ml-team", "gpu", None, None, None, None, 0.0, 0.0)


def accounting(job_id: int, **kw: object) -> AccountingJob:
    base: dict[str, object] = dict(
        job_id_raw=job_id,
        job_id=str(job_id),
        user="alice",
        account="ml-team",
        partition="gpu",
        state="COMPLETED",
        submit_epoch_seconds=1795573800.0,
        start_epoch_seconds=1795573834.0,
        end_epoch_seconds=1795573934.0,
        elapsed_seconds=100,
        node_list="gn1",
        alloc_gpus=2,
        admin_comment="",
        name="train",
    )
    base.update(kw)
    return AccountingJob(**base)  # type: ignore[arg-type]


def test_slurmdbd_source_flags_jobs_without_telemetry_and_completes_partial_records() -> None:
    full = encode(record_for_node(meta(1), "gn1", [gpu("gn1", 0), gpu("gn1", 1, util=0.0)]))
    half = encode(record_for_node(meta(2), "gn1", [gpu("gn1", 0)]))
    jobs = [
        accounting(1, admin_comment=full),
        accounting(2, admin_comment=half, node_list="gn[1-2]", alloc_gpus=2),
        accounting(3),  # no record: allocation only
        accounting(4, admin_comment="JS1:abc"),  # another tool's
        accounting(5, admin_comment="sg1:broken"),
        accounting(6, state="RUNNING", end_epoch_seconds=None),  # not finished: not counted
        accounting(7, alloc_gpus=None),  # no GPU
        accounting(8, end_epoch_seconds=10.0),  # outside the window
        accounting(
            9, admin_comment=encode(record_for_node(meta(99), "gn1", [gpu("gn1", 0)]))
        ),  # another job's
    ]
    got = usages_from_accounting(jobs, ReportFilter(1e9, 2e9), cluster="testgpu", idle_pct=5.0)
    by_job: dict[int, list[object]] = {}
    for u in got.usages:
        by_job.setdefault(u.job_id, []).append(u)
    assert sorted(by_job) == [1, 2, 3, 4, 5, 9]
    assert got.jobs_without_telemetry == 4 and got.partial_jobs == 1 and got.foreign_records == 1
    assert got.damaged_records == 2
    assert sum(u.job_share for u in got.usages) == 6  # each job counted once
    (one,) = by_job[1]
    assert one.telemetry and one.sums.gpus == 2 and one.sums.idle_gpu_seconds == pytest.approx(100.0)  # type: ignore[attr-defined]
    two = by_job[2]
    assert [u.telemetry for u in two] == [True, False]  # type: ignore[attr-defined]
    assert sum(u.sums.gpus for u in two) == 2  # type: ignore[attr-defined]
    (three,) = by_job[3]
    assert not three.telemetry and three.sums.gpu_seconds == 200.0 and three.sums.util_known_gpu_seconds == 0  # type: ignore[attr-defined]


def test_capacity_daily_allocation_trend_and_forecast() -> None:
    day0 = time.mktime((2026, 11, 1, 0, 0, 0, 0, 0, -1))
    jobs = [  # 4 GPUs from 22:00 on day 0 to 02:00 on day 1: 8 GPU-hours on each day
        accounting(1, alloc_gpus=4, submit_epoch_seconds=day0 + 21 * 3600, start_epoch_seconds=day0 + 22 * 3600,
                   end_epoch_seconds=day0 + 26 * 3600),
        accounting(2, alloc_gpus=2, state="RUNNING", submit_epoch_seconds=day0 + 47 * 3600,
                   start_epoch_seconds=day0 + 48 * 3600, end_epoch_seconds=None),  # running: until now
    ]  # fmt: skip
    days = daily(jobs, 12, day0, day0 + 60 * 3600, 5.0)
    assert [d.allocated_gpu_hours for d in days] == pytest.approx([8.0, 8.0, 24.0])
    assert days[2].hours == 12 and days[2].capacity_gpu_hours == 144
    assert fit_line([(0, 10.0), (1, 20.0), (2, 30.0)]) == pytest.approx((10.0, 10.0))
    assert fit_line([(1, 5.0)]) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5 and percentile([], 0.9) is None
    wait = queue_wait(jobs, day0, day0 + 60 * 3600)
    assert wait.jobs == 2 and wait.median_seconds == 3600 and wait.max_seconds == 3600
    # allocation growing 10 points a day on 10 GPUs: 1, 2, 3 GPUs all day (10%, 20%, 30%), then an hour of today
    growing = [
        accounting(
            10 + d,
            alloc_gpus=d + 1,
            start_epoch_seconds=day0 + d * 86400,
            end_epoch_seconds=day0 + (d + 1) * 86400,
        )
        for d in range(3)
    ]
    nodes = [NodeGpus("gn1", 10, "idle")]
    c = capacity(
        growing,
        nodes,
        since=day0,
        until=day0 + 3 * 86400 + 3600,
        threshold_pct=80,
        horizon_days=30,
        idle_pct=5,
    )
    assert [round(d.allocation_pct or 0) for d in c.days[:3]] == [10, 20, 30]
    assert c.trend_pct_per_day == pytest.approx(10.0)
    assert c.crossing == time.strftime("%Y-%m-%d", time.localtime(day0 + 3 * 86400 + 3600 + 4 * 86400))
    assert c.gpus_needed is not None and c.gpus_needed >= 10 and c.gpus_total == 10
    flat = capacity(
        growing[:1], nodes, since=day0, until=day0 + 3600, threshold_pct=80, horizon_days=30, idle_pct=5
    )
    assert flat.crossing.startswith("unknown") and flat.trend_pct_per_day is None


def agg(
    job: int, node: str, minor: int, utils: list[float], start: float = 1000.0, step: float = 60.0
) -> JobGpuAggregate:
    series = tuple(Point(start + step * (i + 1), u, 0, 100.0) for i, u in enumerate(utils))
    return JobGpuAggregate(job, node, minor, start, start + step * len(utils), series=series)


def test_idle_detection_and_notify_arguments() -> None:
    a = agg(5, "gn1", 0, [80, 80, 0, 0, 0])  # idle for the last 3 minutes
    assert idle_since(a, 5.0) == 1000.0 + 120.0
    assert idle_since(agg(5, "gn1", 1, [0, 0]), 5.0) == 1000.0  # idle since the job started
    assert idle_since(agg(5, "gn1", 2, [0, 90]), 5.0) is None  # busy now
    assert idle_since(agg(5, "gn1", 3, []), 5.0) is None
    running = [
        RunningJob(5, "5", "bob; rm -rf /", "vision", "gpu", "gn1", 1000.0),
        RunningJob(6, "6", "c", "a", "p", "gn2", 1.0),
    ]
    found = find_idle(
        running,
        {5: [a, agg(5, "gn1", 1, [90] * 5)], 6: [agg(6, "gn2", 0, [0, 0, 0, 0, 0])]},
        minutes=2.5,
        idle_pct=5.0,
        now=1300.0,
        stale_after_seconds=60.0,
    )
    assert [(j.job_id_raw, len(j.idle_gpus), j.gpus) for j in found] == [(6, 1, 1), (5, 1, 2)]
    assert found[1].idle_seconds == 180.0 and not found[1].stale
    args, env = notify_command(
        ["/bin/echo", "{user}", "idle {idle_minutes} min: {job_id}", "{nope}"], found[1]
    )
    assert args == ["/bin/echo", "bob; rm -rf /", "idle 3 min: 5", "{nope}"]  # one argument each, no shell
    assert env["SLURMGPU_IDLE_IDLE_GPUS"] == "gn1:gpu0" and env["SLURMGPU_IDLE_USER"] == "bob; rm -rf /"
    assert find_idle(running, {5: [a]}, minutes=10, idle_pct=5.0, now=1300.0, stale_after_seconds=60.0) == []


def test_access_rules() -> None:
    root = access.current_viewer(parse_config(""), uid=0)
    assert root.admin and root.only_user(None) is None and root.only_user("bob") == "bob"
    nobody = pwd.getpwnam("nobody")
    user = access.current_viewer(parse_config(""), uid=nobody.pw_uid)
    assert (
        not user.admin
        and user.only_user(None) == "nobody"
        and user.may_see("nobody")
        and not user.may_see("alice")
    )
    with pytest.raises(access.AccessError, match="only see your own jobs"):
        user.only_user("alice")
    with pytest.raises(access.AccessError, match="only root may"):
        user.require_admin("slurmgpu capacity")
    group = __import__("grp").getgrgid(nobody.pw_gid).gr_name
    cfg = parse_config(f"[reports]\nadmin_groups = ['{group}']\n")
    assert access.current_viewer(cfg, uid=nobody.pw_uid).admin


# -- the commands ---------------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeSlurm]:
    fake = FakeSlurm(tmp_path)
    extra = "[reports]\ncurrency = 'EUR'\ngpu_hour_rate = 2.0\nenergy_price_per_kwh = 0.5\n[reports.partition_rates]\ndebug = 1.0\n"
    cfg = write_config(tmp_path, extra=extra)
    cfg.write_text(cfg.read_text().replace(f"{tmp_path}/no-slurm-here", str(fake.bin)))
    monkeypatch.setenv("SLURMGPU_CONFIG", str(cfg))
    return cfg, fake


def ctx(job_id: int, user: str, account: str, partition: str = "gpu", node: str = "gn1") -> JobContext:
    return JobContext(job_id, node, "unit", user, None, account, partition, (0,))


def populate(cfg: Path, now: float) -> list[tuple[JobContext, list[JobGpuUsage]]]:
    """Five jobs of alice and bob with known utilization, over two nodes."""
    jobs = [
        (ctx(11, "alice", "ml-team"), [gpu("gn1", 0, 80.0, now - 7200, now - 3600), gpu("gn1", 1, 0.0, now - 7200, now - 3600)]),
        (ctx(12, "alice", "ml-team", "debug"), [gpu("gn1", 2, 40.0, now - 1800, now - 600)]),
        (ctx(13, "bob", "vision"), [gpu("gn1", 3, 2.0, now - 900, now - 300)]),
        (ctx(14, "bob", "vision", node="gn2"), [gpu("gn2", 0, None, now - 4000, now - 100)]),
        (ctx(15, "alice", "ml-team", node="gn2"), [gpu("gn2", 1, 100.0, now - 100, now - 50)]),
    ]  # fmt: skip
    store = Store.open(cfg.parent / "state" / "slurmgpu.db")
    for c, rows in jobs:
        store.save_job(c, [], rows, max(r.end_epoch_seconds for r in rows))
    store.close()
    return jobs


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def table_rows(text: str, first: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_report_table_csv_and_json_agree_and_add_up(env: tuple[Path, FakeSlurm]) -> None:
    cfg, _ = env
    now = time.time()
    jobs = populate(cfg, now)
    code, out = run("report", "--since", "1d", "--json")
    assert code == 0, out
    data = json.loads(out)
    total = data["total"]
    gpus = [g for _, rows in jobs for g in rows]
    assert total["jobs"] == 5 and total["gpus"] == 6
    assert total["gpu_hours_allocated"] == pytest.approx(sum(g.elapsed_seconds for g in gpus) / 3600)
    assert total["gpu_hours_used"] == pytest.approx(
        sum((g.utilization_mean_pct or 0) / 100 * g.elapsed_seconds for g in gpus) / 3600
    )
    assert total["idle_gpu_hours"] == pytest.approx((3600 + 600) / 3600)  # gn1 gpu1 (0%) and gn1 gpu3 (2%)
    assert total["gpu_hours_without_utilization"] == pytest.approx(3900 / 3600)
    assert total["energy_kwh"] == pytest.approx(6 * 1000 / 3.6e6)
    hours = {
        p: sum(g.elapsed_seconds for c, rows in jobs if c.partition == p for g in rows) / 3600
        for p in ("gpu", "debug")
    }
    assert total["gpu_cost"] == pytest.approx(hours["gpu"] * 2.0 + hours["debug"] * 1.0)
    assert total["energy_cost"] == pytest.approx(total["energy_kwh"] * 0.5)
    groups = {g["user"]: g for g in data["groups"]}
    assert set(groups) == {"alice", "bob"} and groups["alice"]["jobs"] == 3
    for m in ("gpu_hours_allocated", "gpu_hours_used", "idle_gpu_hours", "energy_kwh", "cost"):
        assert sum(g[m] for g in data["groups"]) == pytest.approx(total[m])
    assert [j["job_id"] for j in data["top_jobs"]][:1] == ["11"]  # the idle second GPU wastes most
    code, text = run("report", "--since", "1d", "--csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["row"] for r in rows] == ["group", "group", "total"]
    for r in rows:
        src = total if r["row"] == "total" else groups[r["user"]]
        for m in ("jobs", "gpu_hours_allocated", "gpu_hours_used", "energy_kwh", "cost"):
            assert float(r[m]) == pytest.approx(src[m])
    code, table = run("report", "--since", "1d")
    assert code == 0 and "COST EUR" in table and "Most wasteful jobs" in table
    shown = table_rows(table, "USER")
    for name, src in (("alice", groups["alice"]), ("bob", groups["bob"]), ("TOTAL", total)):
        cells = shown[name]
        assert int(cells[0]) == src["jobs"]
        assert float(cells[1]) == pytest.approx(src["gpu_hours_allocated"], abs=5e-5)
        assert float(cells[2]) == pytest.approx(src["gpu_hours_used"], abs=5e-5)
        assert float(cells[-1]) == pytest.approx(src["cost"], abs=0.005)


def test_report_options_and_errors(env: tuple[Path, FakeSlurm]) -> None:
    cfg, _ = env
    populate(cfg, time.time())
    for key in GROUP_KEYS:
        code, out = run("report", "--by", key, "--json")
        assert code == 0, out
        assert sum(g["gpu_hours_allocated"] for g in json.loads(out)["groups"]) == pytest.approx(
            json.loads(out)["total"]["gpu_hours_allocated"]
        )
    code, out = run("report", "--account", "vision", "--json")
    assert {g["user"] for g in json.loads(out)["groups"]} == {"bob"}
    code, out = run("report", "--since", "whenever")
    assert code == 1 and out.count("\n") == 1 and "--since" in out
    code, out = run("report", "--csv", "--json")
    assert code == 2 and "exclude each other" in out
    code, out = run("report", "--since", "3d", "--until", "2d")
    assert code == 0 and "no GPU jobs ended in this window" in out
    os.remove(cfg.parent / "state" / "slurmgpu.db")
    code, out = run("report")
    assert code == 1 and out.startswith("Error: no job store") and out.count("\n") == 1


def test_report_with_another_idle_threshold_reads_the_gpu_rows(env: tuple[Path, FakeSlurm]) -> None:
    cfg, _ = env
    populate(cfg, time.time())
    cfg.write_text(cfg.read_text().replace("[thresholds]\n", "[thresholds]\nidle_utilization_pct = 50.0\n"))
    code, out = run("report", "--json")
    assert code == 0, out
    assert json.loads(out)["idle_threshold_pct"] == 50.0
    assert json.loads(out)["total"]["idle_gpu_hours"] == pytest.approx(
        (3600 + 600 + 1200) / 3600
    )  # + the 40% GPU


def test_report_from_slurm_accounting_equals_the_store(env: tuple[Path, FakeSlurm]) -> None:
    cfg, fake = env
    now = time.time()
    jobs = populate(cfg, now)
    records: dict[int, object] = {}
    for c, rows in jobs:
        m = JobMeta("unit", c.job_id, c.user, None, c.account, c.partition, None, None, None, None, 0.0, 0.0)
        records[c.job_id] = merge(records.get(c.job_id), record_for_node(m, c.node, rows))  # type: ignore[arg-type]
    for c, rows in jobs:
        start = min(r.start_epoch_seconds for r in rows)
        end = max(r.end_epoch_seconds for r in rows)
        fake.add_job(
            c.job_id, User=c.user, Account=c.account, Partition=c.partition, Start=start, End=end,
            ElapsedRaw=int(end - start), NodeList=c.node, AllocTRES=f"cpu=1,gres/gpu={len(rows)}",
            AdminComment=encode(records[c.job_id]),  # type: ignore[arg-type]
        )  # fmt: skip
    fake.add_job(
        20, User="bob", Account="vision", Start=now - 500, End=now - 400, ElapsedRaw=100
    )  # no record
    code, out = run("report", "--since", "1d", "--json", "--source", "slurmdbd")
    assert code == 0, out
    remote = json.loads(out)
    code, out = run("report", "--since", "1d", "--json")
    local = json.loads(out)
    for m in ("gpu_hours_used", "idle_gpu_hours", "energy_kwh", "memory_efficiency_pct"):
        assert remote["total"][m] == pytest.approx(local["total"][m], abs=1e-4)
    assert (
        remote["total"]["jobs"] == local["total"]["jobs"] + 1
        and remote["total"]["jobs_without_telemetry"] == 1
    )
    assert remote["total"]["gpu_hours_allocated"] == pytest.approx(
        local["total"]["gpu_hours_allocated"] + 200 / 3600, abs=1e-4
    )
    assert any("without a GPU record" in n for n in remote["notes"])
    code, table = run("report", "--since", "1d", "--source", "slurmdbd")
    assert "NO TELEMETRY" in table and "Note: 1 job(s) without a GPU record" in table


def test_chargeback_lines_per_account_and_user(env: tuple[Path, FakeSlurm]) -> None:
    cfg, _ = env
    now = time.time()
    populate(cfg, now)
    month = time.strftime("%Y-%m", time.localtime(now - 7200))
    code, out = run("chargeback", "--month", month, "--csv")
    assert code == 0, out
    rows = list(csv.DictReader(io.StringIO(out)))
    keys = [(r["account"], r["user"]) for r in rows]
    if time.strftime("%Y-%m", time.localtime(now - 50)) == month:  # no month boundary in the last two hours
        assert keys == [("ml-team", "alice"), ("vision", "bob")]
        assert all(r["currency"] == "EUR" and r["month"] == month for r in rows)
    code, out = run("chargeback", "--month", month, "--json")
    data = json.loads(out)
    assert sum(line["cost"] for line in data["lines"]) == pytest.approx(data["total"]["cost"])
    assert data["rates"]["partition_rates"] == {"debug": 1.0}
    code, out = run("chargeback", "--month", month)
    assert code == 0 and "ACCOUNT" in out and "Rates: default 2 EUR/GPU-hour" in out
    code, out = run("chargeback", "--month", "11-2026")
    assert code == 1 and "YYYY-MM" in out


def test_capacity_and_idle_commands(env: tuple[Path, FakeSlurm]) -> None:
    cfg, fake = env
    now = time.time()
    fake.set(
        "nodes",
        [
            {"name": "gn1", "gres": "gpu:4", "state": "mixed"},
            {"name": "gn2", "gres": "gpu:4", "state": "drained"},
        ],
    )
    fake.add_job(30, Start=now - 3600, End=now - 1800, Submit=now - 3700, AllocTRES="gres/gpu=4")
    code, out = run("capacity", "--days", "2", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["gpus_total"] == 8 and data["gpus_in_service"] == 4 and len(data["days"]) == 2
    assert sum(d["allocated_gpu_hours"] for d in data["days"]) == pytest.approx(2.0)
    assert data["queue_wait"]["jobs"] == 1 and data["queue_wait"]["median_seconds"] == pytest.approx(
        100, abs=1
    )
    code, out = run("capacity")
    assert code == 0 and "GPUs to stay under 80%" in out
    fake.set(
        "running",
        [
            {
                "raw": 40,
                "id": "40",
                "user": "bob",
                "account": "vision",
                "partition": "gpu",
                "nodes": "gn1",
                "start": now - 600,
            }
        ],
    )
    store = Store.open(cfg.parent / "state" / "slurmgpu.db")
    store.save_aggregates(
        "unit",
        [
            agg(40, "gn1", 0, [90.0] * 10, start=now - 600),
            agg(40, "gn1", 1, [60.0] + [0.0] * 9, start=now - 600),
        ],
        now,
    )
    store.close()
    marker = cfg.parent / "notified"
    code, out = run(
        "idle", "--minutes", "5", "--notify", f"/bin/sh -c 'echo \"$0 $1\" >> {marker}' {{user}} {{job_id}}"
    )
    assert code == 0, out
    assert "40" in out and "1 of 2" in out and "gn1:gpu1" in out
    assert marker.read_text() == "bob 40\n"
    code, out = run("idle", "--minutes", "20", "--json")
    assert code == 0 and json.loads(out)["jobs"] == []
    code, out = run("idle", "--notify", "/bin/false", "--minutes", "1")
    assert code == 1 and "notify command failed" in out


def test_users_see_only_their_own_jobs(env: tuple[Path, FakeSlurm], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, fake = env
    populate(cfg, time.time())
    bob = pwd.getpwnam("nobody")
    monkeypatch.setattr(os, "getuid", lambda: bob.pw_uid)
    store = Store.open(cfg.parent / "state" / "slurmgpu.db")
    now = time.time()
    store.save_job(ctx(16, "nobody", "vision"), [], [gpu("gn1", 0, 30.0, now - 100, now - 10)], now)
    store.close()
    code, out = run("report", "--json")
    assert code == 0 and {g["user"] for g in json.loads(out)["groups"]} == {"nobody"}
    code, out = run("report", "--user", "alice")
    assert code == 1 and "only see your own jobs" in out and out.count("\n") == 1
    code, out = run("report", "--by", "account", "--json")
    assert json.loads(out)["total"]["jobs"] == 1
    code, out = run("chargeback", "--json", "--month", time.strftime("%Y-%m"))
    assert {line["user"] for line in json.loads(out)["lines"]} <= {"nobody"}
    code, out = run("capacity")
    assert code == 1 and "only root may run it" in out
    code, out = run("job", "11")
    assert code == 1 and "another user's job" in out and out.count("\n") == 1
    code, out = run("job", "16", "--json")
    assert code == 0 and json.loads(out)["user"] == "nobody"
    fake.add_job(11, User="alice")
    code, out = run("job", "11")
    assert code == 1 and "another user's job" in out


def test_job_from_the_accounting_record_when_the_store_lacks_it(env: tuple[Path, FakeSlurm]) -> None:
    cfg, fake = env
    Store.open(cfg.parent / "state" / "slurmgpu.db").close()
    rows = [gpu("gn1", 0, 80.0), gpu("gn1", 1, 0.0)]
    record = merge(
        record_for_node(meta(50), "gn1", rows), record_for_node(meta(50), "gn2", [gpu("gn2", 0, 60.0)])
    )
    fake.add_job(50, NodeList="gn[1-2]", AllocTRES="gres/gpu=3", AdminComment=encode(record))
    code, out = run("job", "50", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["nodes"] == ["gn1", "gn2"] and data["gpus_allocated"] == 3 and data["state"] == "COMPLETED"
    assert data["gpu_hours_allocated"] == pytest.approx(300 / 3600)
    # a store that has this node's part only: the other node's rows come from the record
    store = Store.open(cfg.parent / "state" / "slurmgpu.db")
    store.save_job(
        JobContext(50, "gn1", "unit", "alice", 1001, "ml-team", "gpu", (0, 1)), [], rows, time.time()
    )
    store.close()
    code, out = run("job", "50", "--json")
    data = json.loads(out)
    assert [g["node"] for g in data["gpus"]] == ["gn1", "gn1", "gn2"]
    # a large job: summarised nodes count in the totals, with a hint
    many = None
    for n in range(1, 40):
        rows = [gpu(f"gn{n}", m, float((n * 7 + m * 13) % 100)) for m in range(8)]
        many = merge(many, record_for_node(meta(51), f"gn{n}", rows))
    assert many is not None
    small, text = fit(many, 700, 5.0)
    assert small.summarised_nodes()
    fake.add_job(51, NodeList="gn[1-39]", AllocTRES="gres/gpu=312", AdminComment=text)
    code, out = run("job", "51", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["gpus_allocated"] == 312 and any("kept only as totals" in h for h in data["hints"])
    assert data["gpu_hours_allocated"] == pytest.approx(312 * 100 / 3600, rel=1e-3)
    assert len(data["nodes"]) == 39


def test_progress_bar_only_on_a_terminal(env: tuple[Path, FakeSlurm]) -> None:
    cfg, _ = env
    populate(cfg, time.time())
    code, out = run("report")  # CliRunner: not a terminal, no bar anywhere
    assert code == 0 and "%" not in out.splitlines()[0] and "[#" not in out
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "slurmgpu"), "report"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "SLURMGPU_CONFIG": str(cfg)},
    )
    os.close(slave)
    stdout, _ = proc.communicate(timeout=60)
    seen = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.returncode == 0 and b"USER" in stdout and b"[#" not in stdout
    assert b"report (store) [" in seen and b"100%" in seen


def test_every_report_command_is_registered() -> None:
    assert {"report", "chargeback", "capacity", "idle"} <= set(cli.commands)
    for name in ("report", "chargeback", "capacity", "idle"):
        command = cli.commands[name]
        assert isinstance(command, click.Command) and command.help and "Example:" in command.help
    assert ReportsConfig().mirror == "background"
