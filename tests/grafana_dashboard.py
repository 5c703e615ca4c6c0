"""Reading the shipped Grafana dashboard: its panels, its queries, and each query as Grafana sends it. Shared by
tests/unit/test_grafana_dashboard.py (shape, names, promtool) and tests/cluster/test_agent.py (a real Prometheus)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).parents[1] / "plugins/grafana/slurmgpu-dashboard.json"
VARIABLE = re.compile(r"\$(?:\{(\w+)(?:[:.][^}]*)?\}|(\w+))")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\s*\)$", re.DOTALL)
# what Grafana substitutes for its own variables
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel.get("title", ""), target


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = dashboard["templating"]["list"]
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every label_values() selector of the templating."""
    found = [(f"panel {title!r} {t.get('refId')}", t["expr"]) for title, t in targets(dashboard)]
    for var in variables(dashboard):
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["query"])
            assert match, f"variable {var['name']}: not label_values(selector, label): {var['query']}"
            found.append((f"variable {var['name']}", match.group(1)))
    return found


def substituted(dashboard: dict[str, Any], expr: str) -> str:
    """expr as Grafana would send it with every variable at All (.*) or at its current value."""
    values = dict(BUILTINS)
    for var in variables(dashboard):
        if var["type"] == "query":
            values[var["name"]] = var.get("allValue") or ".*"
        elif var["type"] == "custom":
            values[var["name"]] = str(var["current"]["value"])
    return VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), expr)
