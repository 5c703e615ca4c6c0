"""The shipped Prometheus alert rules (plugins/prometheus/): valid for Prometheus' own rule checker, their unit
tests pass in Prometheus' rule engine (promtool), and every alert is tested, labelled and explained."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from tests.exporter_metrics import EXPORTER, ExporterMetrics

RULES_DIR = Path(__file__).parents[2] / "plugins" / "prometheus"
RULES = RULES_DIR / "slurmgpu-alerts.yml"
RULE_TESTS = RULES_DIR / "slurmgpu-alerts.test.yml"
PROMTOOL = Path("/usr/bin/promtool")  # Debian's prometheus package (scripts/install.sh installs it)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL.exists(), "promtool is missing: scripts/install.sh installs Debian's prometheus package"
    return subprocess.run(
        [str(PROMTOOL), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120, check=False
    )


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass_in_prometheus_rule_engine() -> None:
    proc = promtool("test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_severity_a_summary_and_a_firing_test_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"] for group in tests for case in group["alert_rule_test"] if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for group in tests
        for case in group["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]
        assert alert["alert"] in fired, f"{alert['alert']}: no test case where it fires"
        assert alert["alert"] in quiet, f"{alert['alert']}: no test case where it must stay quiet"
    assert {a["labels"]["severity"] for a in alerts()} == {"critical", "warning", "info"}


def test_alerts_use_only_metrics_the_exporter_serves() -> None:
    """A renamed metric would leave an alert silently matching nothing. Counters are served with _total."""
    metrics = ExporterMetrics(EXPORTER.read_text()).metrics
    served = {
        name for name, labels in metrics.items() if labels is not None
    }  # defined by a *MetricFamily call
    assert "slurmgpu_gpu_health_fault" in served and "slurmgpu_gpu_xid_errors_total" in served
    for alert in alerts():
        used = set(re.findall(r"slurmgpu_[a-z_]+", alert["expr"]))
        assert used <= served, (alert["alert"], used - served)
