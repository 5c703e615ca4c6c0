"""DCGM's own health watches and diagnostics as CheckResults, when dcgmi is installed (never required)."""

from __future__ import annotations

from pathlib import Path

from slurmgpu.config import Config
from slurmgpu.health.results import CheckResult


def dcgm_results(config: Config, diag_level: int | None) -> list[CheckResult]:
    path = Path(config.health.dcgmi_path)
    if not path.exists():
        if diag_level is not None:
            return [CheckResult("dcgm-diag", "warn", f"--diag needs DCGM: {path} is not installed")]
        return []
    return []
