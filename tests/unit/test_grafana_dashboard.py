"""The Grafana dashboard (plugins/grafana/slurmgpu-dashboard.json) against the exporter it charts.

Metric and label names come from src/slurmgpu/agent/exporter.py as it is at test time (read with ast, not
imported), so a renamed metric or label breaks this test rather than a panel in production. Counters are exposed
with a _total suffix (prometheus_client adds it), so a query must use that name. Every expression is also
parsed by promtool (Debian's prometheus package), after the dashboard variables are replaced by values Grafana could
send; tests/cluster/test_agent.py runs every expression on the real Prometheus of the test cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.exporter_metrics import EXPORTER, ExporterMetrics
from tests.grafana_dashboard import (
    BUILTINS,
    LABEL_VALUES,
    VARIABLE,
    load,
    panels,
    queries,
    substituted,
    targets,
    variables,
)

ROOT = Path(__file__).parents[2]
DATASOURCE_UID = "${datasource}"
PROMTOOL = Path("/usr/bin/promtool")  # Debian's prometheus package

METRIC = re.compile(r"(?<![\w:])slurmgpu_[a-z_]+")
# metric{matchers}: the selector's label names must be labels of that metric
SELECTOR = re.compile(r"(?<![\w:])(slurmgpu_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
# by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...)
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def exporter() -> ExporterMetrics:
    return ExporterMetrics(EXPORTER.read_text())


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"]
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None  # an id would clash with an existing dashboard on import
    every = list(panels(dashboard))
    assert every
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in every:
        assert panel.get("title"), panel["id"]
        if panel["type"] != "row":
            assert panel.get("description"), f"panel {panel['title']!r} has no description"
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"


def test_grid_positions_fit_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        for key in ("x", "y", "w", "h"):
            assert isinstance(pos[key], int) and pos[key] >= 0, (panel["title"], key)
        assert pos["w"] >= 1 and pos["h"] >= 1 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_datasource_is_the_template_variable(dashboard: dict[str, Any]) -> None:
    variable = next(var for var in variables(dashboard) if var["name"] == "datasource")
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
    for title, target in targets(dashboard):
        assert target.get("datasource", {"uid": DATASOURCE_UID})["uid"] == DATASOURCE_UID, title
    for var in variables(dashboard):
        if var["type"] == "query":
            assert var["datasource"]["uid"] == DATASOURCE_UID, var["name"]


def test_targets_have_expr_and_unique_ref_ids(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        ref_ids = [target["refId"] for target in panel.get("targets", [])]
        assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel.get("targets", []):
            assert target.get("expr", "").strip(), (panel["title"], target["refId"])


def test_time_series_and_stats_set_a_unit(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        if panel["type"] in ("timeseries", "stat"):
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_metric_names_are_the_exporters(dashboard: dict[str, Any], exporter: ExporterMetrics) -> None:
    used = {(where, name) for where, expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert used
    unknown = sorted({name for _, name in used} - set(exporter.metrics))
    where = sorted({w for w, name in used if name in unknown})
    assert not unknown, f"not exposed by {EXPORTER.name}: {unknown} (counters need _total), in {where}"


def test_labels_are_the_metrics_labels(dashboard: dict[str, Any], exporter: ExporterMetrics) -> None:
    for where, expr in queries(dashboard):
        metrics = set(METRIC.findall(expr))
        if not metrics <= set(exporter.metrics):
            continue  # test_metric_names_are_the_exporters reports it
        unreadable = sorted(m for m in metrics if exporter.metrics[m] is None)
        assert not unreadable, f"cannot read the labels of {unreadable} from {EXPORTER.name}"
        labels = {label for m in metrics for label in exporter.metrics[m] or []}
        for keyword, names in GROUPING.findall(expr):
            for label in filter(None, (n.strip() for n in names.split(","))):
                assert label in labels, f"{where}: {keyword}({label}) is no label of {sorted(metrics)}"
        for metric, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                assert label in (exporter.metrics[metric] or []), f"{where}: {metric} has no label {label}"
    for var in variables(dashboard):
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["query"])
            assert match
            selector_metrics = METRIC.findall(match.group(1))
            assert len(selector_metrics) == 1, var["name"]
            assert match.group(2) in (exporter.metrics.get(selector_metrics[0]) or []), var["name"]


def test_variables_are_defined(dashboard: dict[str, Any]) -> None:
    defined = {var["name"] for var in variables(dashboard)}
    for where, expr in queries(dashboard):
        for braced, plain in VARIABLE.findall(expr):
            name = braced or plain
            assert name in defined or name in BUILTINS, f"{where}: ${name} is not a dashboard variable"
    for name in ("node", "user", "account", "jobid"):
        var = next(var for var in variables(dashboard) if var["name"] == name)
        assert var["type"] == "query" and var["multi"] and var["includeAll"], name


def _balanced(expr: str) -> bool:
    """Brackets pair up outside string literals."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote = ""
    escaped = False
    for char in expr:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote != "`":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack and not quote


def test_brackets_balance(dashboard: dict[str, Any]) -> None:
    for where, expr in queries(dashboard):
        assert _balanced(expr), f"{where}: unbalanced brackets in {expr}"
    assert not _balanced("sum(rate(x[5m])")
    assert not _balanced('x{a="}"')
    assert _balanced('x{a=")"}')


def test_promtool_parses_every_query(dashboard: dict[str, Any], tmp_path: Path) -> None:
    assert PROMTOOL.exists(), "promtool is missing: scripts/install.sh installs Debian's prometheus package"
    rules = [
        {"record": f"slurmgpu_dashboard:query_{i}", "expr": substituted(dashboard, expr)}
        for i, (_, expr) in enumerate(queries(dashboard))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    run = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
