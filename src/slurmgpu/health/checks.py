"""Health checks: pure functions over one reading of the node (and, after a job, its baselines).

Every check returns CheckResults (ok / warn / fail with a detail). Only hardware faults fail; anything that could
be a configuration or slurmgpu problem warns (decision 5). The prolog runs `prolog_checks`, the epilog
`epilog_checks`, `slurmgpu health` the prolog set without a job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from slurmgpu.config import HealthConfig
from slurmgpu.gpu.types import GpuReading, NodeReading
from slurmgpu.health.results import CheckResult, Status
from slurmgpu.health.xid_table import classify
from slurmgpu.store.records import Baseline

GIB = 1 << 30
# nvmlClocksEventReason* bits (pynvml constants; the GPU layer hands over the raw mask)
REASON_GPU_IDLE = 0x1
REASON_HW_SLOWDOWN = 0x8
REASON_HW_THERMAL_SLOWDOWN = 0x40
REASON_HW_POWER_BRAKE = 0x80


@dataclass(frozen=True)
class XidEvent:
    code: int
    minor: int | None  # None: the bus id matched no GPU NVML shows (a lost GPU, or another device)
    bus_id: str
    line: str = ""  # the kernel-log line, timestamp included


def _ok(check: str, minor: int | None = None) -> CheckResult:
    return CheckResult(check, "ok", "", minor)


def check_count(node: NodeReading, expected: int | None) -> list[CheckResult]:
    """GPUs NVML shows against what Slurm (gres) or the config says the node has."""
    if not expected:
        return []
    seen = len(node.gpus)
    if seen < expected:
        return [CheckResult("gpu-count", "fail", f"NVML shows {seen} GPUs, the node should have {expected}")]
    if seen > expected:
        return [CheckResult("gpu-count", "warn", f"NVML shows {seen} GPUs, Slurm/config expect {expected}")]
    return [_ok("gpu-count")]


def check_reachable(gpu: GpuReading) -> list[CheckResult]:
    if gpu.status in ("lost", "unresponsive"):
        where = f" (NVML index {gpu.index})" if gpu.minor is None else ""
        return [CheckResult(f"gpu-{gpu.status}", "fail", gpu.detail + where, gpu.minor)]
    if gpu.status == "error":
        return [CheckResult("gpu-read", "warn", gpu.detail, gpu.minor)]
    return [_ok("gpu-reachable", gpu.minor)]


def check_ecc(gpu: GpuReading, cfg: HealthConfig) -> list[CheckResult]:
    out = []
    if gpu.ecc_volatile_uncorrected:
        out.append(
            CheckResult(
                "ecc-uncorrectable",
                "fail",
                f"{gpu.ecc_volatile_uncorrected} uncorrectable ECC errors since the driver loaded",
                gpu.minor,
            )
        )
    if gpu.ecc_volatile_corrected is not None and gpu.ecc_volatile_corrected >= cfg.ecc_correctable_warn:
        out.append(
            CheckResult(
                "ecc-correctable-storm",
                "warn",
                f"{gpu.ecc_volatile_corrected} correctable ECC errors since the driver loaded "
                f"(warn at {cfg.ecc_correctable_warn})",
                gpu.minor,
            )
        )
    return out or [_ok("ecc", gpu.minor)]


def check_memory_repair(gpu: GpuReading, cfg: HealthConfig) -> list[CheckResult]:
    """Page retirement (Volta and older) and row remapping (Ampere and newer)."""
    out = []
    m = gpu.minor
    if gpu.retired_pages_pending:
        out.append(
            CheckResult("retired-pages-pending", "fail", "pages wait for retirement (GPU reset needed)", m)
        )
    retired = (gpu.retired_pages_single_bit or 0) + (gpu.retired_pages_double_bit or 0)
    if retired >= cfg.retired_pages_fail:
        out.append(
            CheckResult(
                "retired-pages", "fail", f"{retired} retired pages (RMA at {cfg.retired_pages_fail})", m
            )
        )
    elif retired >= cfg.retired_pages_warn:
        out.append(CheckResult("retired-pages", "warn", f"{retired} retired pages", m))
    if gpu.remapped_rows_failure:
        out.append(CheckResult("row-remap-failure", "fail", "row remapping failed (RMA)", m))
    if gpu.remapped_rows_pending:
        out.append(CheckResult("row-remap-pending", "fail", "a row remapping waits for a GPU reset", m))
    unc = gpu.remapped_rows_uncorrectable or 0
    if unc >= cfg.remapped_rows_uncorrectable_warn:
        out.append(CheckResult("row-remap-count", "warn", f"{unc} rows remapped for uncorrectable errors", m))
    return out or [_ok("memory-repair", m)]


def check_thermal(gpu: GpuReading, cfg: HealthConfig) -> list[CheckResult]:
    out = []
    m = gpu.minor
    t = gpu.temperature_celsius
    if t is not None and t >= cfg.temperature_fail_celsius:
        out.append(
            CheckResult("temperature", "fail", f"{t} C (fail at {cfg.temperature_fail_celsius:g} C)", m)
        )
    elif t is not None and t >= cfg.temperature_warn_celsius:
        out.append(
            CheckResult("temperature", "warn", f"{t} C (warn at {cfg.temperature_warn_celsius:g} C)", m)
        )
    reasons = gpu.clock_event_reasons or 0
    if reasons & REASON_HW_THERMAL_SLOWDOWN:
        out.append(CheckResult("hw-thermal-slowdown", "fail", "clocks cut by hardware thermal slowdown", m))
    elif reasons & REASON_HW_SLOWDOWN:
        out.append(CheckResult("hw-slowdown", "warn", "clocks cut by hardware slowdown", m))
    if reasons & REASON_HW_POWER_BRAKE:
        out.append(CheckResult("hw-power-brake", "warn", "clocks cut by the external power brake", m))
    return out or [_ok("thermal", m)]


def check_pcie(gpu: GpuReading) -> list[CheckResult]:
    """A link trained narrower than its maximum is a seating or riser fault. A lower generation is normal while the
    GPU idles (it downshifts to save power), so generation only counts on a busy GPU."""
    m = gpu.minor
    out = []
    if (
        gpu.pcie_link_width is not None
        and gpu.pcie_link_width_max
        and gpu.pcie_link_width < gpu.pcie_link_width_max
    ):
        out.append(
            CheckResult(
                "pcie-link", "warn", f"PCIe link x{gpu.pcie_link_width} of x{gpu.pcie_link_width_max}", m
            )
        )
    idle = bool((gpu.clock_event_reasons or 0) & REASON_GPU_IDLE)
    if (
        not idle
        and gpu.pcie_link_gen is not None
        and gpu.pcie_link_gen_max
        and gpu.pcie_link_gen < gpu.pcie_link_gen_max
    ):
        out.append(
            CheckResult("pcie-link", "warn", f"PCIe gen{gpu.pcie_link_gen} of gen{gpu.pcie_link_gen_max}", m)
        )
    return out or [_ok("pcie-link", m)]


def check_persistence(gpu: GpuReading, cfg: HealthConfig) -> list[CheckResult]:
    if cfg.persistence_mode == "warn" and gpu.persistence_mode is False:
        return [
            CheckResult("persistence-mode", "warn", "persistence mode is off (slow job starts)", gpu.minor)
        ]
    return [_ok("persistence-mode", gpu.minor)]


def check_leftovers(gpu: GpuReading, job_minors: tuple[int, ...], cfg: HealthConfig) -> list[CheckResult]:
    """Compute processes on a job's GPU before it starts: a previous job's processes survived."""
    if cfg.leftover_processes == "ignore" or gpu.minor not in job_minors or not gpu.processes:
        return [_ok("leftover-processes", gpu.minor)]
    procs = ", ".join(
        f"pid {p.pid}" + (f" ({p.used_memory_bytes / GIB:.1f} GiB)" if p.used_memory_bytes else "")
        for p in gpu.processes[:3]
    )
    more = f" and {len(gpu.processes) - 3} more" if len(gpu.processes) > 3 else ""
    status: Status = "fail" if cfg.leftover_processes == "fail" else "warn"
    return [CheckResult("leftover-processes", status, f"{procs}{more} still on the GPU", gpu.minor)]


def check_xids(events: Iterable[XidEvent], cfg: HealthConfig) -> list[CheckResult]:
    out = []
    for e in events:
        info = classify(e.code, drain=cfg.xid_drain, warn=cfg.xid_warn, ignore=cfg.xid_ignore)
        if info.action == "ignore":
            continue
        status: Status = "fail" if info.action == "drain" else "warn" if info.action == "warn" else "ok"
        detail = f"XID {e.code}: {info.meaning}" + ("" if e.minor is not None else f" (PCI {e.bus_id})")
        out.append(CheckResult("xid", status, detail, e.minor))
    return out


def gpu_checks(gpu: GpuReading, cfg: HealthConfig) -> list[CheckResult]:
    """Everything one reading of one GPU tells without a job or the kernel log: what the prolog checks on every GPU,
    and what the node agent's exporter reports as the GPU's health at each scrape."""
    reach = check_reachable(gpu)
    if reach[0].status != "ok":
        return reach
    return [
        *reach,
        *check_ecc(gpu, cfg),
        *check_memory_repair(gpu, cfg),
        *check_thermal(gpu, cfg),
        *check_pcie(gpu),
        *check_persistence(gpu, cfg),
    ]


def prolog_checks(
    node: NodeReading,
    job_minors: tuple[int, ...],
    cfg: HealthConfig,
    *,
    expected_gpus: int | None = None,
    xids: Iterable[XidEvent] = (),
) -> list[CheckResult]:
    """The fast catalogue: everything here reads what one NVML pass and the kernel log already gave us."""
    if node.error:
        return [CheckResult("nvml", "warn", f"GPU library unusable: {node.error}")]
    results = check_count(node, expected_gpus or cfg.expected_gpus or None)
    for gpu in node.gpus:
        results += gpu_checks(gpu, cfg)
        if gpu.ok:
            results += check_leftovers(gpu, job_minors, cfg)
    results += check_xids(xids, cfg)
    unhealthy = any(r.status == "fail" for r in results)
    _, missing = node.select(job_minors)
    if missing and not unhealthy:
        shown = ", ".join(f"gpu{m}" for m in missing)
        results.append(
            CheckResult("gpu-missing", "warn", f"Slurm allocated {shown}, NVML shows no such minor")
        )
    return results


def epilog_checks(
    node: NodeReading,
    baselines: dict[int, Baseline],
    elapsed_seconds: float,
    cfg: HealthConfig,
    xids: Iterable[XidEvent] = (),
) -> list[CheckResult]:
    """What changed on the job's GPUs while it ran."""
    results: list[CheckResult] = []
    found, missing = node.select(tuple(sorted(baselines)))
    for minor in missing:
        results.append(CheckResult("gpu-lost", "fail", "GPU no longer visible at job end", minor))
    for minor, gpu in found.items():
        base = baselines[minor]
        reach = check_reachable(gpu)
        if reach[0].status != "ok":
            results += reach
            continue
        if (
            gpu.ecc_aggregate_uncorrected is not None
            and base.ecc_aggregate_uncorrected is not None
            and gpu.ecc_aggregate_uncorrected > base.ecc_aggregate_uncorrected
        ):
            new = gpu.ecc_aggregate_uncorrected - base.ecc_aggregate_uncorrected
            results.append(
                CheckResult(
                    "ecc-uncorrectable", "fail", f"{new} new uncorrectable ECC errors during the job", minor
                )
            )
        if (
            gpu.ecc_aggregate_corrected is not None
            and base.ecc_aggregate_corrected is not None
            and elapsed_seconds > 0
        ):
            rate = (gpu.ecc_aggregate_corrected - base.ecc_aggregate_corrected) / (elapsed_seconds / 3600.0)
            if rate >= cfg.ecc_correctable_rate_warn_per_hour:
                results.append(
                    CheckResult(
                        "ecc-correctable-storm",
                        "warn",
                        f"{rate:.0f} correctable ECC errors per hour during the job",
                        minor,
                    )
                )
        if gpu.retired_pages_pending:
            results.append(
                CheckResult(
                    "retired-pages-pending", "fail", "pages wait for retirement (GPU reset needed)", minor
                )
            )
        if gpu.remapped_rows_pending:
            results.append(
                CheckResult("row-remap-pending", "fail", "a row remapping waits for a GPU reset", minor)
            )
        if gpu.remapped_rows_failure:
            results.append(CheckResult("row-remap-failure", "fail", "row remapping failed (RMA)", minor))
    results += check_xids(xids, cfg)
    return results
