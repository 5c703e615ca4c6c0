"""The prolog's first health gate: pure checks over one reading of the node.

Only hardware faults fail (a lost or unresponsive GPU, uncorrectable ECC errors, pages waiting for retirement).
Anything that could be our own or a configuration problem (NVML not loading, a GPU Slurm names but NVML does not
show while every GPU answers) is a warning: decision 5, a monitoring problem must never drain a cluster.
"""

from __future__ import annotations

from slurmgpu.gpu.types import NodeReading
from slurmgpu.health.results import CheckResult


def prolog_gate(node: NodeReading, job_minors: tuple[int, ...]) -> list[CheckResult]:
    if node.error:
        return [CheckResult("nvml", "warn", f"GPU library unusable: {node.error}")]
    results: list[CheckResult] = []
    for gpu in node.gpus:
        minor = gpu.minor
        if gpu.status in ("lost", "unresponsive"):
            where = f" (NVML index {gpu.index})" if minor is None else ""
            results.append(CheckResult(f"gpu-{gpu.status}", "fail", gpu.detail + where, minor))
            continue
        if gpu.status == "error":
            results.append(CheckResult("gpu-read", "warn", gpu.detail, minor))
            continue
        if gpu.ecc_volatile_uncorrected:
            results.append(
                CheckResult(
                    "ecc-uncorrectable",
                    "fail",
                    f"{gpu.ecc_volatile_uncorrected} uncorrectable ECC errors since boot",
                    minor,
                )
            )
        if gpu.retired_pages_pending:
            results.append(
                CheckResult(
                    "retired-pages-pending", "fail", "pages wait for retirement (GPU reset needed)", minor
                )
            )
    unhealthy = any(r.status == "fail" for r in results)
    _, missing = node.select(job_minors)
    if missing and not unhealthy:
        shown = ", ".join(f"gpu{m}" for m in missing)
        results.append(
            CheckResult("gpu-missing", "warn", f"Slurm allocated {shown}, NVML shows no such minor")
        )
    return results
