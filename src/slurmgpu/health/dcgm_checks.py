"""DCGM's own health watches and diagnostics as CheckResults, when dcgmi is installed (never required).

DCGM names GPUs by its GPU id, which is the NVML index; results are mapped to device minors through the node's
reading, like everything else. A dcgmi that fails or prints nonsense is a warning (DCGM's problem or ours, not the
GPU's); only what DCGM itself reports as failed fails.
"""

from __future__ import annotations

from pathlib import Path

from slurmgpu.config import Config
from slurmgpu.gpu.types import NodeReading
from slurmgpu.health.results import CheckResult, Status


def _minor(reading: NodeReading, dcgm_gpu_id: int) -> int | None:
    return next((g.minor for g in reading.gpus if g.index == dcgm_gpu_id), None)


def dcgm_results(
    config: Config,
    diag_level: int | None,
    reading: NodeReading,
    *,
    health: bool = True,
) -> list[CheckResult]:
    from slurmgpu.gpu.dcgm import Dcgmi

    dcgmi = Dcgmi(
        Path(config.health.dcgmi_path), timeout_seconds=config.thresholds.gpu_call_timeout_seconds * 4
    )
    if not dcgmi.available():
        if diag_level is not None:
            return [CheckResult("dcgm-diag", "warn", f"--diag needs DCGM: {dcgmi.path} is not installed")]
        return []
    out: list[CheckResult] = []
    if health:
        report = dcgmi.health()
        if report.error:
            out.append(CheckResult("dcgm-health", "warn", f"dcgmi health: {report.error}"))
        for entity in report.gpus:
            for incident in entity.incidents:
                status: Status = "fail" if incident.health == "fail" else "warn"
                out.append(
                    CheckResult(
                        f"dcgm-{incident.system}", status, incident.message, _minor(reading, entity.entity_id)
                    )
                )
        if not out:
            out.append(CheckResult("dcgm-health", "ok", ""))
    if diag_level is not None:
        diag = dcgmi.diag(diag_level)
        if diag.error:
            out.append(CheckResult("dcgm-diag", "warn", f"dcgmi diag -r {diag_level}: {diag.error}"))
        for test in diag.tests:
            for gpu in test.gpus:
                if gpu.result in ("fail", "warn"):
                    text = "; ".join(gpu.warnings) or f"{test.name} {gpu.result}"
                    out.append(
                        CheckResult(
                            f"dcgm-diag-{test.name}",
                            "fail" if gpu.result == "fail" else "warn",
                            text,
                            _minor(reading, gpu.gpu_id),
                        )
                    )
        if diag.overall == "pass":
            out.append(CheckResult("dcgm-diag", "ok", ""))
    return out
