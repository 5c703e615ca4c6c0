"""Rendering a JobSummary: a terminal table and JSON (the same data)."""

from __future__ import annotations

import json
from dataclasses import asdict

from slurmgpu.reports.job_summary import GIB, JobSummary


def duration(seconds: float) -> str:
    s = round(seconds)
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{days}-" if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mem(peak: int | None, total: int | None) -> str:
    if total is None:
        return "-"
    return f"{_num(None if peak is None else peak / GIB, '.1f')} / {total / GIB:.1f} GiB"


def render_table(s: JobSummary) -> str:
    lines = [f"Job {s.job_id}" + (f" ({s.name})" if s.name else "") + f"  cluster {s.cluster}"]
    header = [
        ("User", s.user),
        ("Account", s.account or "-"),
        ("Partition", s.partition or "-"),
        ("Nodes", ",".join(s.nodes) or "-"),
        ("State", s.state),
        ("Start", s.start or "-"),
        ("Elapsed", duration(s.elapsed_seconds)),
    ]
    lines += [f"  {k:<10} {v}" for k, v in header]
    if s.slurm_error:
        lines.append(f"  (Slurm accounting unavailable: {s.slurm_error})")
    lines.append("")
    cols = ("NODE", "GPU", "MODEL", "UTIL MEAN", "UTIL MAX", "MEMORY PEAK / TOTAL", "ENERGY kWh", "AVG POWER")
    body = [
        (
            r.node,
            str(r.minor),
            r.model or "-",
            _pct(r.utilization_mean_pct),
            _pct(r.utilization_max_pct),
            _mem(r.memory_peak_bytes, r.memory_total_bytes),
            _num(r.energy_kwh, ".4f"),
            "-" if r.average_power_watts is None else f"{r.average_power_watts:.0f} W",
        )
        for r in s.gpus
    ]
    widths = [max(len(c), *(len(row[i]) for row in body)) if body else len(c) for i, c in enumerate(cols)]
    right = {3, 4, 6, 7}

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    lines.append(fmt(cols))
    lines += [fmt(row) for row in body]
    lines.append("")
    lines.append(
        f"GPU-hours allocated {s.gpu_hours_allocated:.4f}, used {_num(s.gpu_hours_used, '.4f')}; "
        f"GPU efficiency {_pct(s.gpu_efficiency_pct)}; energy {_num(s.energy_kwh, '.4f')} kWh"
        + (
            ""
            if s.average_power_watts is None
            else f" (average power {s.average_power_watts:.0f} W, all GPUs)"
        )
    )
    spark = [(f"{r.node}:gpu{r.minor}", sparkline([p[1] for p in r.series])) for r in s.gpus if r.series]
    if spark:
        lines.append("Utilization over the job (node agent):")
        width = max(len(name) for name, _ in spark)
        lines += [f"  {name:<{width}}  {line}" for name, line in spark]
    if s.hints:
        lines.append("Hints:")
        lines += [f"  - {h}" for h in s.hints]
    return "\n".join(lines) + "\n"


BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """0-100 values as one line of block characters, averaged down to `width` columns."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [
            sum(values[int(i * step) : int((i + 1) * step)]) / max(1, int((i + 1) * step) - int(i * step))
            for i in range(width)
        ]
    return "".join(BLOCKS[min(8, max(0, round(v / 100 * 8)))] for v in values)


def render_json(s: JobSummary) -> str:
    return json.dumps(asdict(s), indent=2, sort_keys=False) + "\n"
