"""The `slurmgpu` command: thin click commands over the library."""

from __future__ import annotations

import click

from slurmgpu import __version__
from slurmgpu.cli.admin import agent, drain, health, nodes, resume
from slurmgpu.cli.common import handle_errors, load_cli_config
from slurmgpu.cli.reports import capacity, chargeback, idle, report
from slurmgpu.cli.sim import sim


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slurmgpu")
def cli() -> None:
    """Accountable and safe GPU use on Slurm clusters.

    Example:

        slurmgpu job 12345
    """


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--cluster", default="", help="Cluster name, when the store holds several.")
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw utilization, memory and power over time to this PNG/SVG/PDF (needs matplotlib).",
)
@handle_errors
def job(job_id: str, as_json: bool, cluster: str, plot_file: str | None) -> None:
    """GPU efficiency of one job: utilization, memory and energy per GPU, totals, hints.

    JOB_ID is a job id (123), an array task (123_4) or a heterogeneous job component (123+1).

    Example:

        slurmgpu job 12345 --json
    """
    from slurmgpu.cli.job_lookup import job_summary
    from slurmgpu.reports.render_job import render_json, render_table

    summary = job_summary(load_cli_config(), job_id, cluster)
    click.echo(render_json(summary) if as_json else render_table(summary), nl=False)
    if plot_file:
        from pathlib import Path

        from slurmgpu.reports.plot import plot_job

        n = plot_job(summary, Path(plot_file))
        click.echo(f"wrote {plot_file} ({n} GPU(s))", err=True)


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@handle_errors
def config_show() -> None:
    """Print the effective configuration (file values over defaults) as TOML.

    Example:

        SLURMGPU_CONFIG=/etc/slurmgpu/slurmgpu.toml slurmgpu config show
    """
    from slurmgpu.config import render_config

    click.echo(render_config(load_cli_config()), nl=False)


@cli.group()
def hook() -> None:
    """Slurm prolog/epilog entry points (run by the shims in prolog/ and epilog/, as root)."""


@hook.command("prolog")
def hook_prolog() -> None:
    """Health gate, GPU ownership and baselines before a job. Exits 1 only for a hardware fault.

    Example:

        slurmgpu hook prolog
    """
    from slurmgpu.hooks.runner import run_hook

    raise SystemExit(run_hook("prolog"))


@hook.command("epilog")
def hook_epilog() -> None:
    """Record the job's GPU usage after it ends. Always exits 0.

    Example:

        slurmgpu hook epilog
    """
    from slurmgpu.hooks.runner import run_hook

    raise SystemExit(run_hook("epilog"))


cli.add_command(sim)
for command in (health, nodes, drain, resume, agent):
    cli.add_command(command)
for command in (report, chargeback, capacity, idle):
    cli.add_command(command)
