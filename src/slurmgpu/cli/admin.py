"""Admin commands: `slurmgpu health`, `nodes`, `drain`, `resume`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

import click

from slurmgpu.cli.common import handle_errors, load_cli_config


@click.command()
@click.option("--node", default=None, help="Node name (default: SLURMD_NODENAME or this host's short name).")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option(
    "--diag",
    "diag_level",
    type=click.IntRange(1, 4),
    default=None,
    help="Also run DCGM diagnostics at this level (dcgmi diag -r N; needs DCGM).",
)
@click.option(
    "--slurm",
    "slurm_mode",
    is_flag=True,
    help="As Slurm's HealthCheckProgram: drain on failure, lift slurmgpu's own drain when healthy.",
)
@click.option("--all", "show_all", is_flag=True, help="Show passing checks too.")
def health(node: str | None, as_json: bool, diag_level: int | None, slurm_mode: bool, show_all: bool) -> None:
    """Check this node's GPUs now. Exit 0 healthy, 1 warnings, 2 failures, 3 could not check.

    Example:

        slurmgpu health --json
    """
    from slurmgpu.errors import SlurmgpuError
    from slurmgpu.health.service import EXIT_CANNOT_CHECK, local_node, run_health

    try:
        report = run_health(load_cli_config(), local_node(node), diag_level=diag_level, slurm_mode=slurm_mode)
    except (SlurmgpuError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_CANNOT_CHECK) from None
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
    else:
        shown = [r for r in report.results if show_all or r.status != "ok"]
        click.echo(
            f"{report.node}: {report.status.upper()}"
            + (f" ({report.action}: {report.action_detail})" if report.action != "none" else "")
        )
        for r in shown:
            click.echo(f"  {r.status.upper():4} {r.check:<22} {r.where:<6} {r.detail}")
        if not shown:
            click.echo("  all checks passed")
    raise SystemExit(report.exit_code)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@handle_errors
def nodes(as_json: bool) -> None:
    """Nodes with state, drain reason, since when, by whom, and the last health result.

    Example:

        slurmgpu nodes
    """
    from slurmgpu.health.service import nodes_view

    view = nodes_view(load_cli_config())
    if as_json:
        click.echo(json.dumps([asdict(v) for v in view], indent=2))
        return
    rows = [("NODE", "STATE", "SINCE", "BY", "LAST HEALTH", "REASON")]
    for v in view:
        health = (
            "-"
            if v.last_health is None
            else (f"{v.last_health} {time.strftime('%m-%d %H:%M', time.localtime(v.last_health_time or 0))}")
        )
        rows.append((v.name, v.state, v.reason_time or "-", v.reason_user or "-", health, v.reason or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])


@click.command()
@click.argument("node_names", nargs=-1, required=True, metavar="NODE...")
@click.option("--reason", required=True, help="Why (recorded; Slurm shows it as 'slurmgpu: manual: REASON').")
@handle_errors
def drain(node_names: tuple[str, ...], reason: str) -> None:
    """Drain nodes by hand: running jobs finish, no new ones start.

    Example:

        slurmgpu drain gn2 gn3 --reason "fan replacement"
    """
    from slurmgpu.health.service import drain_nodes

    for line in drain_nodes(load_cli_config(), list(node_names), reason):
        click.echo(line)


@click.command()
@click.argument("node_names", nargs=-1, required=True, metavar="NODE...")
@click.option("--force", is_flag=True, help="Resume even though the node's last health check failed.")
@handle_errors
def resume(node_names: tuple[str, ...], force: bool) -> None:
    """Return nodes slurmgpu drained to service. Drains set by others are left alone.

    Refuses a node whose last health check failed, unless --force. Resuming acknowledges the XIDs logged so far.

    Example:

        slurmgpu resume gn2
    """
    from slurmgpu.health.service import resume_nodes

    done, refused = resume_nodes(load_cli_config(), list(node_names), force=force)
    for line in done:
        click.echo(line)
    for line in refused:
        click.echo(f"refused: {line}", err=True)
    if refused:
        raise SystemExit(1)


@click.command()
@click.option("--node", default=None, help="Node name (default: SLURMD_NODENAME or this host's short name).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=None, help="Seconds between rounds.")
@click.option("--listen", default=None, help="HOST:PORT for Prometheus /metrics ([agent] listen).")
@click.option("--once", is_flag=True, help="One round, a checkpoint, a JSON summary; no server.")
@handle_errors
def agent(node: str | None, interval: float | None, listen: str | None, once: bool) -> None:
    """The node agent: per-job GPU aggregates, XID watch, Prometheus exporter. One per node (a systemd unit).

    Example:

        slurmgpu agent --node gpu007 --listen 127.0.0.1:9810
    """
    import dataclasses
    import signal
    import threading

    from slurmgpu.agent.affinity import pin_to_one_cpu
    from slurmgpu.agent.loop import Agent
    from slurmgpu.health.service import local_node

    config = load_cli_config()
    if interval is not None:
        config = dataclasses.replace(
            config, agent=dataclasses.replace(config.agent, interval_seconds=interval)
        )
    if listen is not None:
        config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, listen=listen))
    cpu = pin_to_one_cpu(config.agent.cpu)  # before any thread starts, so that all of them inherit it
    the_agent = Agent(config, local_node(node))
    restored = the_agent.restore()
    if once:
        snap = the_agent.round()
        the_agent.checkpoint()
        the_agent.close()
        click.echo(
            json.dumps(
                {
                    "node": the_agent.node,
                    "restored": restored,
                    "cpu": cpu,
                    "allowed_cpus": sorted(os.sched_getaffinity(0)),
                    "gpus": len(snap.reading.gpus) if snap.reading else 0,
                    "jobs": sorted(snap.jobs),
                    "success": snap.success,
                    "round_seconds": snap.round_seconds,
                }
            )
        )
        return
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    from slurmgpu.agent.exporter import AgentCollector
    from slurmgpu.errors import InputError

    registry = CollectorRegistry()
    registry.register(AgentCollector(the_agent.node, lambda: the_agent.snapshot, config.health))
    host, _, port = config.agent.listen.rpartition(":")
    if not port.isdigit():
        raise InputError(f"--listen must be HOST:PORT (got {config.agent.listen!r})")
    try:
        start_http_server(int(port), addr=host, registry=registry)
    except OSError as exc:
        raise InputError(f"cannot listen on {config.agent.listen}: {exc.strerror}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    the_agent.log(
        "info",
        f"agent for {the_agent.node} on {config.agent.listen}, every "
        f"{config.agent.interval_seconds:g} s on CPU {'any' if cpu is None else cpu}; "
        f"resumed {restored} aggregate(s)",
    )
    the_agent.run_forever(stop)
