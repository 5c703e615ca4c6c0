"""Rendering reports: a terminal table, CSV (one row per group, then the total) and JSON (everything, unrounded).

All three come from `report_dict`, so they carry the same numbers; the table rounds them for reading.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from slurmgpu.reports.aggregate import GroupRow, Report
from slurmgpu.store.queries import TopJob

METRICS = (
    "jobs",
    "jobs_without_telemetry",
    "gpus",
    "gpu_hours_allocated",
    "gpu_hours_used",
    "gpu_hours_without_utilization",
    "unused_gpu_hours",
    "gpu_efficiency_pct",
    "idle_gpu_hours",
    "memory_efficiency_pct",
    "energy_kwh",
    "average_power_per_gpu_watts",
    "gpu_cost",
    "energy_cost",
    "cost",
)


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def key_name(key: str) -> str:
    return key.replace("-", "_")


def metrics(row: GroupRow) -> dict[str, Any]:
    s = row.sums
    return {
        "jobs": row.jobs,
        "jobs_without_telemetry": row.jobs_without_telemetry,
        "gpus": s.gpus,
        "gpu_hours_allocated": s.gpu_hours_allocated,
        "gpu_hours_used": s.gpu_hours_used,
        "gpu_hours_without_utilization": s.gpu_hours_without_utilization,
        "unused_gpu_hours": s.gpu_hours_unused,
        "gpu_efficiency_pct": s.gpu_efficiency_pct,
        "idle_gpu_hours": s.idle_gpu_hours,
        "memory_efficiency_pct": s.memory_efficiency_pct,
        "energy_kwh": s.energy_kwh,
        "average_power_per_gpu_watts": s.average_power_per_gpu_watts,
        "gpu_cost": row.gpu_cost,
        "energy_cost": row.energy_cost,
        "cost": row.cost,
    }


def top_job_dict(j: TopJob) -> dict[str, Any]:
    s = j.sums
    return {
        "job_id": j.display_id,
        "job_id_raw": j.job_id,
        "cluster": j.cluster,
        "user": j.user,
        "account": j.account,
        "partition": j.partition,
        "end": iso(j.end_epoch_seconds),
        "gpus": s.gpus,
        "gpu_hours_allocated": s.gpu_hours_allocated,
        "gpu_hours_used": s.gpu_hours_used,
        "unused_gpu_hours": s.gpu_hours_unused,
        "idle_gpu_hours": s.idle_gpu_hours,
        "gpu_efficiency_pct": s.gpu_efficiency_pct,
        "energy_kwh": s.energy_kwh,
    }


def report_dict(r: Report) -> dict[str, Any]:
    f = r.filter
    return {
        "source": r.source,
        "source_detail": r.source_detail,
        "window": {
            "since": iso(f.since_epoch),
            "until": iso(f.until_epoch),
            "since_epoch_seconds": f.since_epoch,
            "until_epoch_seconds": f.until_epoch,
        },
        "filters": {
            "cluster": f.cluster or None,
            "account": f.account,
            "user": f.user,
            "partition": f.partition,
        },
        "by": list(r.by),
        "idle_threshold_pct": r.idle_pct,
        "currency": r.rates.currency,
        "rates_configured": r.rates.configured,
        "groups": [
            {**{key_name(k): v for k, v in zip(r.by, g.key, strict=True)}, **metrics(g)} for g in r.groups
        ],
        "total": metrics(r.total),
        "top_jobs": [top_job_dict(j) for j in r.top_jobs],
        "notes": list(r.notes),
    }


def render_json(r: Report) -> str:
    return json.dumps(report_dict(r), indent=2) + "\n"


def render_csv(r: Report) -> str:
    """One row per group, then a row `total` (its key columns empty); unrounded, `null` values empty."""
    data = report_dict(r)
    keys = [key_name(k) for k in r.by]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", *keys, *METRICS, "currency"])
    for g in data["groups"]:
        writer.writerow(["group", *(g[k] for k in keys), *(_csv(g[m]) for m in METRICS), r.rates.currency])
    total = data["total"]
    writer.writerow(["total", *("" for _ in keys), *(_csv(total[m]) for m in METRICS), r.rates.currency])
    return out.getvalue()


def _csv(value: Any) -> Any:
    return "" if value is None else value


# -- the table -------------------------------------------------------------------------------------------------


def hours_digits(values: list[float]) -> int:
    """Decimals for a column of GPU-hours: small test jobs need 4, a cluster's month 1."""
    top = max((abs(v) for v in values), default=0.0)
    return 4 if top < 10 else 2 if top < 1000 else 1


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def table(headers: list[str], rows: list[list[str]], left: int) -> list[str]:
    """Columns sized to fit; the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(row: list[str]) -> str:
        cells = [
            v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [fmt(headers), *(fmt(r) for r in rows)]


def _title(r: Report) -> str:
    f = r.filter
    what = ", ".join(
        f"{name} {value}"
        for name, value in (
            ("account", f.account),
            ("user", f.user),
            ("partition", f.partition),
            ("cluster", f.cluster),
        )
        if value
    )
    by = " and ".join(r.by) if r.by else "total"
    return (
        f"GPU usage by {by}"
        + (f", {what}" if what else "")
        + f", jobs ended {iso(f.since_epoch)[:16].replace('T', ' ')}"
        f" .. {iso(f.until_epoch)[:16].replace('T', ' ')}"
    )


def render_table(r: Report) -> str:
    rows = [*r.groups, r.total]
    digits = hours_digits([g.sums.gpu_hours_allocated for g in rows])
    kwh_digits = hours_digits([g.sums.energy_kwh for g in rows])
    show_cost = r.rates.configured
    show_blind = r.total.jobs_without_telemetry > 0
    key_headers = [k.upper() for k in r.by] or ["ALL"]
    headers = [
        *key_headers,
        "JOBS",
        "GPU-H ALLOC",
        "GPU-H USED",
        "EFFICIENCY",
        "IDLE GPU-H",
        "MEM EFF",
        "ENERGY kWh",
        "W/GPU",
    ]
    headers += ["NO TELEMETRY"] if show_blind else []
    headers += [f"COST {r.rates.currency}".rstrip()] if show_cost else []
    body = []
    for g in rows:
        s = g.sums
        key = list(g.key) if g is not r.total else ["TOTAL", *([""] * (len(key_headers) - 1))]
        line = [
            *(k or "-" for k in key),
            str(g.jobs),
            _num(s.gpu_hours_allocated, digits),
            _num(s.gpu_hours_used, digits),
            _pct(s.gpu_efficiency_pct),
            _num(s.idle_gpu_hours, digits),
            _pct(s.memory_efficiency_pct),
            _num(s.energy_kwh, kwh_digits),
            _num(s.average_power_per_gpu_watts, 0),
        ]
        line += [str(g.jobs_without_telemetry)] if show_blind else []
        line += [_num(g.cost, 2)] if show_cost else []
        body.append(line)
    lines = [_title(r), f"source: {r.source_detail}", ""]
    lines += table(headers, body, len(key_headers))
    if r.top_jobs:
        top_digits = hours_digits([j.sums.gpu_hours_allocated for j in r.top_jobs])
        lines += ["", "Most wasteful jobs (GPU-hours allocated but not used):"]
        lines += table(
            [
                "JOB",
                "USER",
                "ACCOUNT",
                "GPUS",
                "GPU-H ALLOC",
                "GPU-H USED",
                "UNUSED",
                "IDLE GPU-H",
                "EFFICIENCY",
            ],
            [
                [
                    j.display_id,
                    j.user,
                    j.account or "-",
                    str(j.sums.gpus),
                    _num(j.sums.gpu_hours_allocated, top_digits),
                    _num(j.sums.gpu_hours_used, top_digits),
                    _num(j.sums.gpu_hours_unused, top_digits),
                    _num(j.sums.idle_gpu_hours, top_digits),
                    _pct(j.sums.gpu_efficiency_pct),
                ]
                for j in r.top_jobs
            ],
            3,
        )
    notes = list(r.notes)
    if not r.groups:
        notes.insert(0, "no GPU jobs ended in this window")
    if notes:
        lines += ["", *(f"Note: {n}" for n in notes)]
    return "\n".join(lines) + "\n"
