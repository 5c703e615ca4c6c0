"""The metrics the agent's exporter serves, read from its source (with ast, not imported): name as Prometheus stores
it (counters with the _total prometheus_client adds) -> label names, or None where the labels cannot be read (a
metric-like string outside a *MetricFamily call). Shared by the tests of the Grafana dashboard and the alert rules,
so a renamed metric or label breaks a test rather than a panel or an alert in production."""

from __future__ import annotations

import ast
import re
from pathlib import Path

EXPORTER = Path(__file__).parents[1] / "src/slurmgpu/agent/exporter.py"


class ExporterMetrics:
    """What the exporter exposes: metric name (as Prometheus stores it) -> label names, or None if unreadable."""

    FAMILIES = frozenset({"GaugeMetricFamily", "CounterMetricFamily"})

    def __init__(self, source: str) -> None:
        tree = ast.parse(source)
        self.assigned: dict[str, ast.expr] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for name in node.targets:
                    if isinstance(name, ast.Name):
                        self.assigned[name.id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                self.assigned[node.target.id] = node.value
        # every string literal that is a metric name (the brief's rule: the names the file spells out)
        self.names = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"slurmgpu_[a-z_]+", node.value)
        }
        self.metrics: dict[str, list[str] | None] = {name: None for name in self.names}
        counters: set[str] = set()
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and call_name(node) in self.FAMILIES and node.args):
                continue
            name = self._strings(node.args[0])
            if not name or len(name) != 1:
                continue
            labels_node = next((kw.value for kw in node.keywords if kw.arg == "labels"), None)
            if labels_node is None and len(node.args) >= 4:
                labels_node = node.args[3]
            self.metrics[name[0]] = [] if labels_node is None else self._strings(labels_node)
            if call_name(node) == "CounterMetricFamily":
                counters.add(name[0])
        for name in counters:  # prometheus_client exposes a counter family x as x_total
            self.metrics[f"{name.removesuffix('_total')}_total"] = self.metrics.pop(name)

    def _strings(self, node: ast.expr) -> list[str] | None:
        """The string(s) an expression stands for: a literal, a list of them, a name, *unpacking, a + b."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Name) and node.id in self.assigned:
            return self._strings(self.assigned[node.id])
        if isinstance(node, ast.Starred):
            return self._strings(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self._strings(node.left), self._strings(node.right)
            return None if left is None or right is None else left + right
        if isinstance(node, ast.List | ast.Tuple):
            out: list[str] = []
            for element in node.elts:
                part = self._strings(element)
                if part is None:
                    return None
                out.extend(part)
            return out
        return None


def call_name(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    return node.func.attr if isinstance(node.func, ast.Attribute) else ""
