"""Prometheus exporter of the node agent: a custom collector that reads the agent's latest round at scrape time.

Per-GPU series carry node, gpu (the device minor, as Slurm names it) and uuid, never a job id: one small info
series, slurmgpu_gpu_job_info{node,gpu,uuid,jobid,user,account,partition} 1, joins them to jobs in PromQL, so the
number of series stays flat however many jobs come and go. Names are in base units with a slurmgpu_ prefix.
A part that fails reports slurmgpu_collector_success{collector=...} 0 and never breaks the scrape.

Health per GPU is the prolog's per-GPU check catalogue (health.checks.gpu_checks) over the agent's latest reading,
evaluated at scrape time: slurmgpu_gpu_health_status (0 ok, 1 warn, 2 fail) and one
slurmgpu_gpu_health_fault{check,severity} 1 per check that does not pass, so an alert can name the fault. XIDs are
counted in slurmgpu_gpu_xid_errors_total (the agent drains on drain-class XIDs itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slurmgpu.collection.aggregate import REASON_NAMES
from slurmgpu.config import HealthConfig
from slurmgpu.health.checks import gpu_checks
from slurmgpu.health.results import worst_status

if TYPE_CHECKING:
    from slurmgpu.agent.loop import Snapshot

GPU_LABELS = ["node", "gpu", "uuid"]
HEALTH_VALUES = {"ok": 0.0, "warn": 1.0, "fail": 2.0}


class AgentCollector(Collector):
    def __init__(
        self, node: str, snapshot: Callable[[], Snapshot], health: HealthConfig | None = None
    ) -> None:
        self.node = node
        self.snapshot = snapshot
        self.health = health or HealthConfig()  # the thresholds the hooks use ([health] in the config)

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        success = dict(snap.success)
        gauges = {
            "utilization": GaugeMetricFamily(
                "slurmgpu_gpu_utilization_ratio", "GPU busy fraction (0-1).", labels=GPU_LABELS
            ),
            "mem_used": GaugeMetricFamily(
                "slurmgpu_gpu_memory_used_bytes", "GPU memory used.", labels=GPU_LABELS
            ),
            "mem_total": GaugeMetricFamily(
                "slurmgpu_gpu_memory_total_bytes", "GPU memory total.", labels=GPU_LABELS
            ),
            "power": GaugeMetricFamily("slurmgpu_gpu_power_watts", "Board power draw.", labels=GPU_LABELS),
            "temp": GaugeMetricFamily(
                "slurmgpu_gpu_temperature_celsius", "GPU temperature.", labels=GPU_LABELS
            ),
            "clock": GaugeMetricFamily("slurmgpu_gpu_sm_clock_hertz", "SM clock.", labels=GPU_LABELS),
            "retired": GaugeMetricFamily(
                "slurmgpu_gpu_retired_pages", "Retired pages (page retirement GPUs).", labels=GPU_LABELS
            ),
            "remapped": GaugeMetricFamily(
                "slurmgpu_gpu_remapped_rows", "Remapped rows by cause.", labels=[*GPU_LABELS, "cause"]
            ),
            "up": GaugeMetricFamily(
                "slurmgpu_gpu_up",
                "1 when the GPU answered NVML this round, else 0.",
                labels=[*GPU_LABELS, "status"],
            ),
            "reason": GaugeMetricFamily(
                "slurmgpu_gpu_clock_event_reason",
                "1 while this clock event reason holds.",
                labels=[*GPU_LABELS, "reason"],
            ),
            "info": GaugeMetricFamily(
                "slurmgpu_gpu_job_info",
                "The job that owns the GPU (join on node, gpu).",
                labels=[*GPU_LABELS, "jobid", "user", "account", "partition"],
            ),
            "health": GaugeMetricFamily(
                "slurmgpu_gpu_health_status",
                "Health checks on the latest reading: 0 ok, 1 warn, 2 fail (as the prolog would judge it).",
                labels=GPU_LABELS,
            ),
            "fault": GaugeMetricFamily(
                "slurmgpu_gpu_health_fault",
                "1 for each health check that does not pass on the latest reading.",
                labels=[*GPU_LABELS, "check", "severity"],
            ),
            "job_energy": GaugeMetricFamily(
                "slurmgpu_job_energy_joules",
                "Energy of a running job so far, per GPU (counter delta since its prolog).",
                labels=[*GPU_LABELS, "jobid"],
            ),
        }
        energy = CounterMetricFamily(
            "slurmgpu_gpu_energy_joules", "GPU energy counter since driver load.", labels=GPU_LABELS
        )
        ecc = CounterMetricFamily(
            "slurmgpu_gpu_ecc_errors", "ECC errors.", labels=[*GPU_LABELS, "type", "counter"]
        )
        xids = CounterMetricFamily(
            "slurmgpu_gpu_xid_errors", "XID errors in the kernel log since boot.", labels=GPU_LABELS
        )
        try:
            reading = snap.reading
            for gpu in reading.gpus if reading else ():
                labels = [self.node, "" if gpu.minor is None else str(gpu.minor), gpu.uuid or ""]
                gauges["up"].add_metric([*labels, gpu.status], 1.0 if gpu.ok else 0.0)
                results = gpu_checks(gpu, self.health)
                gauges["health"].add_metric(labels, HEALTH_VALUES[worst_status(results)])
                for result in results:
                    if result.status != "ok":
                        gauges["fault"].add_metric([*labels, result.check, result.status], 1.0)
                if gpu.minor is not None:  # the agent's own tally: kept for a GPU off the bus (XID 79) too
                    xids.add_metric(labels, snap.xid_counts.get(gpu.minor, 0))
                if not gpu.ok:
                    continue
                _add(
                    gauges["utilization"],
                    labels,
                    None if gpu.utilization_pct is None else gpu.utilization_pct / 100,
                )
                _add(gauges["mem_used"], labels, gpu.memory_used_bytes)
                _add(gauges["mem_total"], labels, gpu.memory_total_bytes)
                _add(gauges["power"], labels, gpu.power_watts)
                _add(gauges["temp"], labels, gpu.temperature_celsius)
                _add(gauges["clock"], labels, None if gpu.sm_clock_mhz is None else gpu.sm_clock_mhz * 1e6)
                _add(energy, labels, gpu.energy_joules)
                if gpu.retired_pages_single_bit is not None or gpu.retired_pages_double_bit is not None:
                    gauges["retired"].add_metric(
                        labels, (gpu.retired_pages_single_bit or 0) + (gpu.retired_pages_double_bit or 0)
                    )
                _add(gauges["remapped"], [*labels, "correctable"], gpu.remapped_rows_correctable)
                _add(gauges["remapped"], [*labels, "uncorrectable"], gpu.remapped_rows_uncorrectable)
                for kind in ("corrected", "uncorrected"):
                    for counter in ("volatile", "aggregate"):
                        _add(ecc, [*labels, kind, counter], getattr(gpu, f"ecc_{counter}_{kind}"))
                for bit, name in REASON_NAMES.items():
                    if gpu.clock_event_reasons is not None:
                        gauges["reason"].add_metric(
                            [*labels, name], 1.0 if gpu.clock_event_reasons & bit else 0.0
                        )
                for job_id in snap.owners.get(gpu.minor, []) if gpu.minor is not None else []:
                    info = snap.jobs.get(job_id)
                    if info is None:
                        continue
                    gauges["info"].add_metric(
                        [*labels, str(job_id), info.user, info.account, info.partition], 1.0
                    )
                    base = info.energy_baseline_joules.get(gpu.minor) if gpu.minor is not None else None
                    if base is not None and gpu.energy_joules is not None:
                        gauges["job_energy"].add_metric(
                            [*labels, str(job_id)], max(0.0, gpu.energy_joules - base)
                        )
            success["export"] = True
        except Exception:
            success["export"] = False
        yield from gauges.values()
        yield energy
        yield ecc
        yield xids
        ok = GaugeMetricFamily(
            "slurmgpu_collector_success",
            "1 when the collector part worked in the last round.",
            labels=["node", "collector"],
        )
        for name, value in sorted(success.items()):
            ok.add_metric([self.node, name], 1.0 if value else 0.0)
        yield ok
        duration = GaugeMetricFamily(
            "slurmgpu_agent_round_seconds", "Duration of the agent's last round.", labels=["node"]
        )
        duration.add_metric([self.node], snap.round_seconds)
        yield duration


def _add(metric: GaugeMetricFamily | CounterMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        metric.add_metric(labels, float(value))
