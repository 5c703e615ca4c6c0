"""`slurmgpu job N --plot FILE.png`: utilization, memory and power over time per GPU, from the agent's series.

matplotlib is an optional extra (`pip install slurmgpu[plot]`): imported here only, and only when asked for.
"""

from __future__ import annotations

from pathlib import Path

from slurmgpu.errors import InputError
from slurmgpu.reports.job_summary import GIB, JobSummary


def plot_job(summary: JobSummary, path: Path) -> int:
    """Write the chart; returns how many GPUs had a series. No series at all is an error, not an empty chart."""
    rows = [r for r in summary.gpus if r.series]
    if not rows:
        raise InputError(f"job {summary.job_id} has no time series (the node agent did not run while it did)")
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--plot {path}: use a .png, .svg or .pdf file name")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'slurmgpu[plot]'") from None
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    t0 = min(p[0] for r in rows for p in r.series)
    for r in rows:
        minutes = [(p[0] - t0) / 60 for p in r.series]
        label = f"{r.node}:gpu{r.minor}"
        axes[0].plot(minutes, [p[1] for p in r.series], label=label)
        axes[1].plot(minutes, [p[2] / GIB for p in r.series], label=label)
        axes[2].plot(minutes, [p[3] for p in r.series], label=label)
    axes[0].set_ylabel("utilization %")
    axes[0].set_ylim(0, 105)
    axes[1].set_ylabel("memory GiB")
    axes[2].set_ylabel("power W")
    axes[2].set_xlabel("minutes since the job started")
    axes[0].legend(loc="upper right", fontsize="small")
    fig.suptitle(f"Job {summary.job_id} ({summary.user}, {summary.account or '-'})")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise InputError(f"--plot {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return len(rows)
