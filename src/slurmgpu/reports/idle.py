"""Running jobs whose GPUs have been idle for a while (pure), from the node agents' per-job aggregates.

The agent checkpoints, per running job and GPU, a bounded time series: each point is the mean utilization since the
point before it. A GPU has been idle since the start of the trailing run of points under the idle threshold (the
job's start when the whole series is idle); a GPU whose latest point is busy is not idle. Aggregates the agent has
not updated for a while are reported as stale rather than trusted silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from slurmgpu.collection.aggregate import JobGpuAggregate
from slurmgpu.reports.render_report import table
from slurmgpu.slurm.accounting import RunningJob


@dataclass(frozen=True)
class IdleGpu:
    node: str
    minor: int
    idle_seconds: float
    last_seen_epoch_seconds: float
    stale: bool


@dataclass(frozen=True)
class IdleJob:
    job_id: str
    job_id_raw: int
    user: str
    account: str
    partition: str
    node_list: str
    gpus: int  # GPUs the agents report for the job
    idle_gpus: tuple[IdleGpu, ...]

    @property
    def idle_seconds(self) -> float:
        """How long the job's idle GPUs have all been idle (the shortest of them)."""
        return min(g.idle_seconds for g in self.idle_gpus)

    @property
    def stale(self) -> bool:
        return any(g.stale for g in self.idle_gpus)


def idle_since(agg: JobGpuAggregate, idle_pct: float) -> float | None:
    """When the GPU's trailing idle stretch began; None when its latest point is busy or there is no point."""
    series = agg.series
    if not series or series[-1].utilization_pct >= idle_pct:
        return None
    i = len(series) - 1
    while i > 0 and series[i - 1].utilization_pct < idle_pct:
        i -= 1
    # series[i] opens the trailing idle run; it covers the time since the point before it
    return series[i - 1].t_epoch_seconds if i > 0 else agg.start_epoch_seconds


def find_idle(
    running: list[RunningJob],
    aggregates: Mapping[int, list[JobGpuAggregate]],
    *,
    minutes: float,
    idle_pct: float,
    now: float,
    stale_after_seconds: float,
) -> list[IdleJob]:
    """Running jobs with at least one GPU idle for `minutes` or longer, longest idle first."""
    out = []
    for job in running:
        aggs = aggregates.get(job.job_id_raw, [])
        idle = []
        for agg in aggs:
            since = idle_since(agg, idle_pct)
            if since is None:
                continue
            stale = now - agg.last_epoch_seconds > stale_after_seconds
            duration = max(0.0, agg.last_epoch_seconds - since)
            if duration >= minutes * 60.0:
                idle.append(IdleGpu(agg.node, agg.minor, duration, agg.last_epoch_seconds, stale))
        if idle:
            out.append(
                IdleJob(
                    job.job_id,
                    job.job_id_raw,
                    job.user,
                    job.account,
                    job.partition,
                    job.node_list,
                    len(aggs),
                    tuple(sorted(idle, key=lambda g: (g.node, g.minor))),
                )
            )
    return sorted(out, key=lambda j: (-j.idle_seconds, j.job_id_raw))


_PLACEHOLDER = re.compile(r"\{(job_id|job_id_raw|user|account|partition|nodes|gpus|idle_gpus|idle_minutes)\}")


def notify_values(job: IdleJob) -> dict[str, str]:
    return {
        "job_id": job.job_id,
        "job_id_raw": str(job.job_id_raw),
        "user": job.user,
        "account": job.account,
        "partition": job.partition,
        "nodes": job.node_list,
        "gpus": str(job.gpus),
        "idle_gpus": ",".join(f"{g.node}:gpu{g.minor}" for g in job.idle_gpus),
        "idle_minutes": f"{job.idle_seconds / 60:.0f}",
    }


def notify_command(template: list[str], job: IdleJob) -> tuple[list[str], dict[str, str]]:
    """The notify command's arguments with {placeholders} filled in (each argument stays one argument: there is no
    shell), and the same values as SLURMGPU_IDLE_* environment variables."""
    values = notify_values(job)
    args = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in template]
    env = {f"SLURMGPU_IDLE_{k.upper()}": v for k, v in values.items()}
    return args, env


def idle_dict(jobs: list[IdleJob], minutes: float, idle_pct: float) -> dict[str, object]:
    return {
        "minutes": minutes,
        "idle_threshold_pct": idle_pct,
        "jobs": [
            {
                **asdict(j),
                "idle_seconds": j.idle_seconds,
                "idle_gpu_count": len(j.idle_gpus),
                "stale": j.stale,
            }
            for j in jobs
        ],
    }


def render_json(jobs: list[IdleJob], minutes: float, idle_pct: float) -> str:
    return json.dumps(idle_dict(jobs, minutes, idle_pct), indent=2) + "\n"


def render_table(jobs: list[IdleJob], minutes: float, idle_pct: float, without_agent: int) -> str:
    head = f"Running jobs with GPUs idle (under {idle_pct:g}% utilization) for {minutes:g} minutes or longer"
    if not jobs:
        lines = [head + ": none"]
    else:
        lines = [head, ""]
        lines += table(
            ["JOB", "USER", "ACCOUNT", "NODES", "IDLE GPUS", "IDLE FOR", "GPUS"],
            [
                [
                    j.job_id,
                    j.user,
                    j.account or "-",
                    j.node_list,
                    f"{len(j.idle_gpus)} of {j.gpus}",
                    f"{j.idle_seconds / 60:.0f} min" + (" (agent data stale)" if j.stale else ""),
                    ",".join(f"{g.node}:gpu{g.minor}" for g in j.idle_gpus),
                ]
                for j in jobs
            ],
            4,
        )
    if without_agent:
        lines += [
            "",
            f"Note: {without_agent} running job(s) have no agent data (is `slurmgpu agent` running there?)",
        ]
    return "\n".join(lines) + "\n"
