"""The node agents on the real cluster, scraped by a real Prometheus: a PromQL join labels a job's utilization with
user and account; the job record comes from the agent; a kill -9 loses (almost) nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests import grafana_dashboard as grafana

from .slurmgpu_cluster import SlurmGpuCluster

pytestmark = pytest.mark.cluster
PROMETHEUS = Path("/usr/bin/prometheus")
ALERT_RULES = Path(__file__).parents[2] / "plugins" / "prometheus" / "slurmgpu-alerts.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


class Agents:
    def __init__(self, slurm: SlurmGpuCluster) -> None:
        self.slurm = slurm
        self.ports = {node: free_port() for node in slurm.cluster.nodes}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        log = (self.slurm.root / f"agent-{node}.log").open("ab")
        self.procs[node] = subprocess.Popen(
            [
                str(self.slurm.exe),
                "agent",
                "--node",
                node,
                "--interval",
                "1",
                "--listen",
                f"127.0.0.1:{self.ports[node]}",
            ],
            env=self.slurm.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if "slurmgpu_collector_success" in http_get(f"http://127.0.0.1:{self.ports[node]}/metrics"):
                    return
            except OSError:
                pass
            assert self.procs[node].poll() is None, (self.slurm.root / f"agent-{node}.log").read_text()[
                -2000:
            ]
            assert time.monotonic() < deadline
            time.sleep(0.2)

    def kill9(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGKILL)
        self.procs[node].wait(10)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


@pytest.fixture(scope="module")
def agents(slurm: SlurmGpuCluster) -> Iterator[Agents]:
    a = Agents(slurm)
    try:
        for node in slurm.cluster.nodes:
            a.start(node)
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def prometheus(slurm: SlurmGpuCluster, agents: Agents) -> Iterator[str]:
    assert PROMETHEUS.exists(), "Debian package prometheus is missing (scripts/install.sh installs it)"
    root = slurm.root / "prometheus"
    root.mkdir()
    targets = [f"127.0.0.1:{p}" for p in agents.ports.values()]
    (root / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(ALERT_RULES))}]\nscrape_configs:\n"
        f"  - job_name: slurmgpu\n    static_configs:\n      - targets: {json.dumps(targets)}\n"
    )
    port = free_port()
    log = (root / "prometheus.log").open("ab")
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if "Ready" in http_get(f"{url}/-/ready"):
                    break
            except OSError:
                pass
            assert proc.poll() is None, (root / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def promql(url: str, query: str) -> list[dict[str, Any]]:
    data = json.loads(http_get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"))
    assert data["status"] == "success", data
    return list(data["data"]["result"])


def test_promql_join_labels_a_jobs_utilization_with_user_and_account(
    slurm: SlurmGpuCluster, agents: Agents, prometheus: str
) -> None:
    up: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(up) < 3:  # every agent scraped at least once
        up = promql(prometheus, 'slurmgpu_collector_success{collector="nvml"}')
        time.sleep(0.5)
    assert len(up) == 3 and all(s["value"][1] == "1" for s in up), up
    job = slurm.submit("slurmgpu sim load --util 70 --mem-gib 6 --seconds 12\n", user="alice", gres="gpu:1")
    query = (
        "slurmgpu_gpu_utilization_ratio * on(node, gpu) group_left(jobid, user, account) "
        f'slurmgpu_gpu_job_info{{jobid="{job}"}}'
    )
    deadline = time.monotonic() + 40
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = promql(prometheus, query)
        if result and float(result[0]["value"][1]) > 0.5:
            break
        time.sleep(0.5)
    assert result, "the join returned nothing"
    (series,) = result
    assert series["metric"]["user"] == "alice" and series["metric"]["account"] == "ml-team"
    assert series["metric"]["jobid"] == str(job)
    assert abs(float(series["value"][1]) - 0.70) < 0.01
    energy = promql(prometheus, f'slurmgpu_job_energy_joules{{jobid="{job}"}}')
    assert energy and float(energy[0]["value"][1]) > 0
    # the shipped Grafana dashboard, every query as Grafana sends it with all variables at All, while the job runs
    dashboard = grafana.load()
    answers = {
        where: promql(prometheus, grafana.substituted(dashboard, expr))
        for where, expr in grafana.queries(dashboard)
    }
    panels = {p["title"]: p for p in grafana.panels(dashboard)}
    (gpus,) = promql(prometheus, grafana.substituted(dashboard, panels["GPUs"]["targets"][0]["expr"]))
    assert gpus["value"][1] == str(4 * len(slurm.cluster.nodes)), promql(
        prometheus, "count by (node, status) (slurmgpu_gpu_up)"
    )
    jobs_table = promql(
        prometheus, grafana.substituted(dashboard, panels["Running jobs"]["targets"][0]["expr"])
    )
    assert any(r["metric"]["jobid"] == str(job) and r["metric"]["user"] == "alice" for r in jobs_table), (
        jobs_table
    )
    by_job = promql(
        prometheus, grafana.substituted(dashboard, panels["GPU utilization by job"]["targets"][0]["expr"])
    )
    assert any(r["metric"]["jobid"] == str(job) and abs(float(r["value"][1]) - 0.70) < 0.01 for r in by_job)
    assert len(answers) > 30
    assert slurm.cluster.wait_job(job, timeout=60) == "COMPLETED"
    # per-GPU series carry no job label: the number of series does not grow with jobs
    assert not promql(
        prometheus,
        'count by (__name__) ({__name__=~"slurmgpu_gpu_.+", jobid!="", __name__!="slurmgpu_gpu_job_info"})',
    )


def test_job_record_comes_from_the_agent_and_survives_kill_9(
    slurm: SlurmGpuCluster, agents: Agents, tmp_path: Path
) -> None:
    script = (
        "slurmgpu sim load --util 80 --mem-gib 10 --seconds 4\n"
        "slurmgpu sim load --util 20 --mem-gib 10 --seconds 4\n"
        "slurmgpu sim load --util 60 --mem-gib 10 --seconds 4\n"
    )
    slurm.prefer("gn2")
    try:
        job = slurm.submit(script, user="bob", gres="gpu:1")
        deadline = time.monotonic() + 30
        while slurm.cluster.job_state(job) != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        node = slurm.cluster.job_field(job, "NodeList")
        time.sleep(5)
        agents.kill9(node)  # no goodbye, no final checkpoint
        time.sleep(2)
        agents.start(node)
        assert slurm.cluster.wait_job(job, timeout=60) == "COMPLETED"
    finally:
        slurm.reset_nodes()
    data = slurm.job_json(job)
    (gpu,) = data["gpus"]
    assert gpu["source"] == "agent"
    truth = slurm.truth(
        gpu["node"], gpu["minor"], data["window_start_epoch_seconds"], data["window_end_epoch_seconds"]
    )
    assert abs(gpu["utilization_mean_pct"] - truth["utilization_mean_pct"]) < 2.0, (gpu, truth)
    assert gpu["utilization_max_pct"] == 80.0
    assert abs(gpu["energy_kwh"] * 3.6e6 - truth["energy_joules"]) <= 0.005 * truth["energy_joules"]
    assert len(gpu["series"]) >= 5
    table = slurm.slurmgpu("job", str(job)).stdout
    assert "Utilization over the job" in table
    png = tmp_path / "job.png"
    slurm.slurmgpu("job", str(job), "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000


def test_shipped_alert_rules_evaluate_and_a_gpu_fault_raises_a_critical_alert(
    slurm: SlurmGpuCluster, agents: Agents, prometheus: str
) -> None:
    """The rules file as shipped, loaded by the real Prometheus over the real agents: every rule evaluates without
    error, and an uncorrectable ECC error injected on one GPU becomes a critical alert naming that GPU and check
    (pending: its `for` is two minutes; promtool's tests cover the timing)."""
    node, gpu = "gn3", 2
    slurm.slurmgpu("sim", "fault", "--node", node, "--gpu", str(gpu), "ecc-uncorrectable")
    try:
        deadline = time.monotonic() + 40
        mine: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not mine:
            data = json.loads(http_get(f"{prometheus}/api/v1/alerts"))["data"]["alerts"]
            mine = [
                a
                for a in data
                if a["labels"]["alertname"] == "SlurmgpuGpuHealthFailing"
                and a["labels"]["node"] == node
                and a["labels"]["gpu"] == str(gpu)
            ]
            time.sleep(0.5)
        assert mine, "no SlurmgpuGpuHealthFailing alert for the injected fault"
        (alert,) = mine
        assert alert["state"] in {"pending", "firing"}
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["check"] == "ecc-uncorrectable"
        assert node in alert["annotations"]["summary"]
        status = promql(prometheus, f'slurmgpu_gpu_health_status{{node="{node}", gpu="{gpu}"}}')
        assert status and status[0]["value"][1] == "2"
        groups = json.loads(http_get(f"{prometheus}/api/v1/rules"))["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 10
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        # no other critical alert on the otherwise healthy test cluster
        others = [a["labels"] for a in data if a["labels"]["severity"] == "critical" and a not in mine]
        assert not others, others
    finally:
        slurm.slurmgpu("sim", "clear", "--node", node, "--gpu", str(gpu))
