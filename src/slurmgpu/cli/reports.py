"""Report commands: `slurmgpu report`, `chargeback`, `capacity`, `idle` (thin: options in, library out).

Every command applies the access rule (a user sees their own jobs; root and `[reports] admin_groups` see all) and
prints one-line errors through handle_errors. Library imports are inside the commands: `slurmgpu job` stays fast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import click

from slurmgpu.cli.common import handle_errors, load_cli_config

GROUP_KEYS = (
    "user",
    "account",
    "partition",
    "gpu-model",
    "day",
)  # = store.queries.GROUP_KEYS (a test checks)
SOURCES = ("store", "slurmdbd")


def stderr_progress(label: str) -> Callable[[int, int], None]:
    """A progress bar on stderr when it is a terminal (never in pipes, files or CI logs)."""
    if not sys.stderr.isatty():
        return lambda done, total: None
    last = [-1]
    width = 30

    def update(done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, 100 * done // total)
        if pct == last[0]:
            return
        last[0] = pct
        filled = width * pct // 100
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {pct:3d}%")
        if pct >= 100:
            sys.stderr.write("\r" + " " * (len(label) + width + 8) + "\r")
        sys.stderr.flush()

    return update


def _one_format(as_csv: bool, as_json: bool) -> None:
    if as_csv and as_json:
        raise click.UsageError("--csv and --json exclude each other")


@click.command()
@click.option("--account", default=None, help="Only jobs of this account.")
@click.option(
    "--user", default=None, help="Only jobs of this user (users other than admins: only themselves)."
)
@click.option("--partition", default=None, help="Only jobs of this partition.")
@click.option(
    "--since", default="30d", show_default=True, help="Jobs that ended from: 30d, 12h, YYYY-MM-DD, ..."
)
@click.option("--until", default="now", show_default=True, help="... up to (not including) this time.")
@click.option(
    "--by", "by", type=click.Choice(GROUP_KEYS), default="user", show_default=True, help="Group by."
)
@click.option(
    "--source", type=click.Choice(SOURCES), default="store", show_default=True, help="Where jobs come from."
)
@click.option(
    "--top", type=click.IntRange(0, 1000), default=10, show_default=True, help="Most wasteful jobs shown."
)
@click.option(
    "--cluster", default="", help="Only this cluster's jobs (default: the config's cluster, else all)."
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV: one row per group, then the total.")
@click.option("--json", "as_json", is_flag=True, help="JSON: groups, total, most wasteful jobs, notes.")
@handle_errors
def report(
    account: str | None,
    user: str | None,
    partition: str | None,
    since: str,
    until: str,
    by: str,
    source: str,
    top: int,
    cluster: str,
    as_csv: bool,
    as_json: bool,
) -> None:
    """GPU-hours allocated and used, efficiency, idle GPU-hours, memory efficiency, energy, cost, and the most
    wasteful jobs, per user, account, partition, GPU model or day.

    A job counts in the window in which it ended. --source slurmdbd reads Slurm accounting instead of this node's
    store: sacct for the jobs and their allocated GPUs, the records the epilogs mirrored into AdminComment for
    their GPU use; jobs without such a record count their allocated GPU-hours and are flagged.

    Example:

        slurmgpu report --account ml-team --since 30d --by user --csv
    """
    from slurmgpu.access import current_viewer
    from slurmgpu.reports import render_report, sources
    from slurmgpu.reports.window import window
    from slurmgpu.store.queries import ReportFilter

    _one_format(as_csv, as_json)
    config = load_cli_config()
    start, end = window(since, until, time.time())
    viewer = current_viewer(config)
    report_filter = ReportFilter(
        since_epoch=start,
        until_epoch=end,
        cluster=cluster or config.cluster,
        account=account,
        user=viewer.only_user(user),
        partition=partition,
    )
    build = sources.store_report if source == "store" else sources.slurmdbd_report
    result = build(config, report_filter, (by,), top=top, progress=stderr_progress(f"report ({source})"))
    if as_json:
        click.echo(render_report.render_json(result), nl=False)
    elif as_csv:
        click.echo(render_report.render_csv(result), nl=False)
    else:
        click.echo(render_report.render_table(result), nl=False)


@click.command()
@click.option("--month", default=None, help="YYYY-MM, local time (default: the last complete month).")
@click.option("--account", default=None, help="Only this account.")
@click.option(
    "--source", type=click.Choice(SOURCES), default="store", show_default=True, help="Where jobs come from."
)
@click.option(
    "--cluster", default="", help="Only this cluster's jobs (default: the config's cluster, else all)."
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV: one row per account and user.")
@click.option("--json", "as_json", is_flag=True, help="JSON: lines, total, the rate card used.")
@handle_errors
def chargeback(
    month: str | None, account: str | None, source: str, cluster: str, as_csv: bool, as_json: bool
) -> None:
    """GPU-hours, energy and cost per account and user for a month, from the rate card in the config
    ([reports]: gpu_hour_rate, partition_rates, gpu_model_rates, energy_price_per_kwh, currency).

    Example:

        slurmgpu chargeback --month 2026-11 --csv > gpu-2026-11.csv
    """
    from slurmgpu.access import current_viewer
    from slurmgpu.reports import chargeback as cb
    from slurmgpu.reports import sources
    from slurmgpu.store.queries import ReportFilter

    _one_format(as_csv, as_json)
    config = load_cli_config()
    name, start, end = cb.month_window(month)
    viewer = current_viewer(config)
    report_filter = ReportFilter(
        since_epoch=start,
        until_epoch=end,
        cluster=cluster or config.cluster,
        account=account,
        user=viewer.only_user(None),
    )
    build = sources.store_report if source == "store" else sources.slurmdbd_report
    result = build(config, report_filter, ("account", "user"), top=0, progress=stderr_progress("chargeback"))
    if as_json:
        click.echo(cb.render_json(result, name), nl=False)
    elif as_csv:
        click.echo(cb.render_csv(result, name), nl=False)
    else:
        click.echo(cb.render_table(result, name), nl=False)


@click.command()
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True, help="Days of history.")
@click.option(
    "--horizon", type=click.IntRange(1, 3650), default=30, show_default=True, help="Days to forecast."
)
@click.option(
    "--threshold",
    type=click.FloatRange(1, 100),
    default=None,
    help="Allocation percentage to stay under (default: [reports] capacity_threshold_pct, 80).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@handle_errors
def capacity(days: int, horizon: int, threshold: float | None, as_json: bool) -> None:
    """Daily GPU-hours allocated against the GPUs Slurm has, the trend and when it crosses the threshold, queue wait
    of GPU jobs, and how many GPUs would keep allocation under the threshold. Admins only.

    Example:

        slurmgpu capacity --days 60 --horizon 90
    """
    from datetime import datetime

    from slurmgpu.access import current_viewer
    from slurmgpu.reports import capacity as cap
    from slurmgpu.slurm.commands import Slurm

    config = load_cli_config()
    current_viewer(config).require_admin("slurmgpu capacity")
    now = time.time()
    today = datetime.fromtimestamp(now)
    since = datetime(today.year, today.month, today.day).timestamp() - (days - 1) * 86400.0
    slurm = Slurm.for_config(config)
    nodes = slurm.gpu_nodes()
    jobs = slurm.accounting_jobs(since, now)
    result = cap.capacity(
        jobs,
        nodes,
        since=since,
        until=now,
        threshold_pct=threshold or config.reports.capacity_threshold_pct,
        horizon_days=horizon,
        idle_pct=config.thresholds.idle_utilization_pct,
    )
    click.echo(cap.render_json(result) if as_json else cap.render_table(result), nl=False)


@click.command()
@click.option(
    "--minutes", type=click.FloatRange(0), default=30.0, show_default=True, help="Idle at least this long."
)
@click.option(
    "--user", default=None, help="Only this user's jobs (users other than admins: only themselves)."
)
@click.option(
    "--notify",
    "notify",
    default=None,
    metavar="COMMAND",
    help="Run COMMAND once per idle job ({job_id}, {user}, {account}, {idle_minutes}, {idle_gpus}, ... are filled "
    "in; also SLURMGPU_IDLE_* variables). No shell. Nothing is cancelled.",
)
@click.option(
    "--cluster", default="", help="Cluster the agents' records are kept under (default: this one's)."
)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@handle_errors
def idle(minutes: float, user: str | None, notify: str | None, cluster: str, as_json: bool) -> None:
    """Running jobs whose GPUs have been idle (under the idle threshold) for a while, from the node agents'
    records: user, account, GPUs, idle time; optionally a notify command per job.

    Example:

        slurmgpu idle --minutes 60 --notify "/usr/local/bin/tell-user {user} {job_id} {idle_minutes}"
    """
    import json
    import os
    import shlex
    import subprocess

    from slurmgpu.access import current_viewer
    from slurmgpu.reports import idle as idle_lib
    from slurmgpu.slurm.commands import Slurm
    from slurmgpu.slurm.env import cluster_name
    from slurmgpu.store.db import read_consistently

    config = load_cli_config()
    template = shlex.split(notify) if notify else None
    if notify is not None and not template:
        raise click.UsageError("--notify needs a command")
    viewer = current_viewer(config)
    running = Slurm.for_config(config).running_jobs(viewer.only_user(user))
    cluster = cluster or cluster_name(config.cluster, config.paths.slurm_conf)
    aggregates = read_consistently(
        config.path("database"),
        lambda store: {j.job_id_raw: store.job_aggregates(cluster, j.job_id_raw) for j in running},
    )
    idle_pct = config.thresholds.idle_utilization_pct
    found = idle_lib.find_idle(
        running,
        aggregates,
        minutes=minutes,
        idle_pct=idle_pct,
        now=time.time(),
        stale_after_seconds=max(60.0, 3 * config.agent.interval_seconds),
    )
    without_agent = sum(1 for j in running if not aggregates.get(j.job_id_raw))
    if as_json:
        data = idle_lib.idle_dict(found, minutes, idle_pct)
        data["running_jobs_without_agent_data"] = without_agent
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(idle_lib.render_table(found, minutes, idle_pct, without_agent), nl=False)
    failed = 0
    for job in found if template else ():
        args, env = idle_lib.notify_command(template or [], job)
        try:
            proc = subprocess.run(
                args,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            ok, detail = proc.returncode == 0, f"exit {proc.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, detail = False, str(exc)
        failed += not ok
        click.echo(f"notify job {job.job_id}: {'ok' if ok else 'failed'} ({detail})", err=True)
    if failed:
        raise click.ClickException(f"the notify command failed for {failed} job(s)")
