"""Chargeback: one line per account and user for a calendar month, priced with the rate card (pure rendering).

The month is local time, [first day 00:00, first day of the next month 00:00); a job counts in the month it ended.
Cost = GPU-hours allocated x rate (GPU model, else partition, else default) + energy kWh x energy price.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import datetime
from typing import Any

from slurmgpu.errors import InputError
from slurmgpu.reports.aggregate import GroupRow, Report
from slurmgpu.reports.render_report import hours_digits, iso, table

COLUMNS = (
    "account",
    "user",
    "jobs",
    "jobs_without_telemetry",
    "gpu_hours_allocated",
    "gpu_hours_used",
    "energy_kwh",
    "gpu_cost",
    "energy_cost",
    "cost",
    "currency",
)


def month_window(text: str | None, now: float | None = None) -> tuple[str, float, float]:
    """('2026-11', start epoch, end epoch) of a YYYY-MM month in local time; None: the last complete month."""
    if text is None:
        today = datetime.fromtimestamp(time.time() if now is None else now)
        year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    else:
        m = re.fullmatch(r"(\d{4})-(\d{1,2})", text.strip())
        if not m or not 1 <= int(m.group(2)) <= 12:
            raise InputError(f"bad month {text!r}: expected YYYY-MM, for example 2026-11")
        year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1)
    end = datetime(year + 1, 1, 1) if month == 12 else datetime(year, month + 1, 1)
    return f"{year:04d}-{month:02d}", start.timestamp(), end.timestamp()


def line(row: GroupRow, account: str, user: str, currency: str) -> dict[str, Any]:
    s = row.sums
    return {
        "account": account,
        "user": user,
        "jobs": row.jobs,
        "jobs_without_telemetry": row.jobs_without_telemetry,
        "gpu_hours_allocated": s.gpu_hours_allocated,
        "gpu_hours_used": s.gpu_hours_used,
        "energy_kwh": s.energy_kwh,
        "gpu_cost": row.gpu_cost,
        "energy_cost": row.energy_cost,
        "cost": row.cost,
        "currency": currency,
    }


def chargeback_dict(r: Report, month: str) -> dict[str, Any]:
    """Lines sorted by account then user (the report is grouped by account and user)."""
    assert r.by == ("account", "user")
    lines = sorted(
        (line(g, g.key[0], g.key[1], r.rates.currency) for g in r.groups),
        key=lambda d: (d["account"], d["user"]),
    )
    return {
        "month": month,
        "since": iso(r.filter.since_epoch),
        "until": iso(r.filter.until_epoch),
        "source": r.source,
        "currency": r.rates.currency,
        "rates_configured": r.rates.configured,
        "rates": {
            "gpu_hour_rate": r.rates.gpu_hour_rate,
            "partition_rates": dict(r.rates.partition_rates),
            "gpu_model_rates": dict(r.rates.gpu_model_rates),
            "energy_price_per_kwh": r.rates.energy_price_per_kwh,
        },
        "lines": lines,
        "total": line(r.total, "", "", r.rates.currency),
        "notes": list(r.notes),
    }


def render_json(r: Report, month: str) -> str:
    return json.dumps(chargeback_dict(r, month), indent=2) + "\n"


def render_csv(r: Report, month: str) -> str:
    """One row per account and user; no total row (the columns add up)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["month", *COLUMNS])
    for d in chargeback_dict(r, month)["lines"]:
        writer.writerow([month, *(d[c] for c in COLUMNS)])
    return out.getvalue()


def render_table(r: Report, month: str) -> str:
    data = chargeback_dict(r, month)
    every = [*data["lines"], data["total"]]
    digits = hours_digits([d["gpu_hours_allocated"] for d in every])
    kwh_digits = hours_digits([d["energy_kwh"] for d in every])
    currency = f" {r.rates.currency}" if r.rates.currency else ""
    headers = [
        "ACCOUNT",
        "USER",
        "JOBS",
        "GPU-H ALLOC",
        "GPU-H USED",
        "ENERGY kWh",
        "GPU COST",
        "ENERGY COST",
        "COST",
    ]
    body = []
    subtotal: dict[str, list[float]] = {}
    for d in data["lines"]:
        body.append(_row(d["account"], d["user"], d, digits, kwh_digits))
        acc = subtotal.setdefault(d["account"], [0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        for i, key in enumerate(
            ("jobs", "gpu_hours_allocated", "gpu_hours_used", "energy_kwh", "gpu_cost", "energy_cost", "cost")
        ):
            acc[i] += d[key]
    accounts = sorted(subtotal)
    if len(accounts) > 1:
        for account in accounts:
            v = subtotal[account]
            d = dict(
                zip(
                    (
                        "jobs",
                        "gpu_hours_allocated",
                        "gpu_hours_used",
                        "energy_kwh",
                        "gpu_cost",
                        "energy_cost",
                        "cost",
                    ),
                    v,
                    strict=True,
                )
            )
            body.append(_row(account, "(all users)", d, digits, kwh_digits))
    body.append(_row("TOTAL", "", data["total"], digits, kwh_digits))
    lines = [
        f"Chargeback {month} ({data['since'][:10]} .. {data['until'][:10]}), source: {r.source_detail}",
        "",
    ]
    lines += table(headers, body, 2)
    rates = r.rates
    if rates.configured:
        parts = [f"default {rates.gpu_hour_rate:g}{currency}/GPU-hour"]
        parts += [f"partition {k} {v:g}" for k, v in rates.partition_rates]
        parts += [f"GPU model *{k}* {v:g}" for k, v in rates.gpu_model_rates]
        if rates.energy_price_per_kwh:
            parts.append(f"energy {rates.energy_price_per_kwh:g}{currency}/kWh")
        lines += ["", "Rates: " + ", ".join(parts)]
    else:
        lines += ["", "Note: no rate card configured ([reports] in the config): costs are 0"]
    lines += [f"Note: {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def _row(account: str, user: str, d: dict[str, Any], digits: int, kwh_digits: int) -> list[str]:
    return [
        account or "-",
        user,
        str(int(d["jobs"])),
        f"{d['gpu_hours_allocated']:,.{digits}f}",
        f"{d['gpu_hours_used']:,.{digits}f}",
        f"{d['energy_kwh']:,.{kwh_digits}f}",
        f"{d['gpu_cost']:,.2f}",
        f"{d['energy_cost']:,.2f}",
        f"{d['cost']:,.2f}",
    ]
