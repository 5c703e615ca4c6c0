"""The node agent: samples all GPUs of its node once per round, attributes each GPU to the job that owns it (the
prolog's owner files), keeps per-job aggregates, checkpoints them to the node store, and watches the kernel log for
XIDs during jobs. One agent per node name (several slurmd may share a host).

Crash safety: aggregates are checkpointed every `checkpoint_every` rounds; a restarted agent resumes the running
jobs' aggregates from the store and, because utilization comes from the driver's sample buffer (about 20 s deep),
re-reads what happened while it was down up to that depth. Energy never depends on the agent (counter deltas).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from slurmgpu.collection.aggregate import CheckpointEncoder, JobGpuAggregate, start, update
from slurmgpu.config import Config
from slurmgpu.gpu.backend import open_backend
from slurmgpu.gpu.types import NodeReading
from slurmgpu.gpu.xid import KernelLogTail
from slurmgpu.health.checks import XidEvent, check_xids
from slurmgpu.hooks import owners
from slurmgpu.hooks.spool import read_baselines, read_job_meta, spool_path
from slurmgpu.log import HookLog
from slurmgpu.slurm.env import cluster_name
from slurmgpu.store.db import Store

# How far back a fresh aggregate (or a restarted agent) reads the driver's utilization buffer.
SAMPLE_BUFFER_SECONDS = 20.0


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    cluster: (
        str  # as the hooks saw it (slurmd's SLURM_CLUSTER_NAME): the key the epilog looks aggregates up by
    )
    user: str
    account: str
    partition: str
    start_epoch_seconds: float
    energy_baseline_joules: dict[int, float] = field(default_factory=dict)  # minor -> counter at job start


@dataclass
class Snapshot:
    """What the exporter serves: the latest round, read at scrape time."""

    reading: NodeReading | None = None
    owners: dict[int, list[int]] = field(default_factory=dict)
    jobs: dict[int, JobInfo] = field(default_factory=dict)
    xid_counts: dict[int, int] = field(default_factory=dict)
    success: dict[str, bool] = field(default_factory=dict)
    round_seconds: float = 0.0


class Agent:
    def __init__(self, config: Config, node: str, *, log: HookLog | None = None) -> None:
        self.config = config
        self.node = node
        self.cluster = cluster_name(config.cluster, config.paths.slurm_conf)
        self.log = log or HookLog(config.path("log_file", node), "agent", to_stderr=True)
        self.backend = open_backend(config, node)
        self.aggregates: dict[tuple[int, int], JobGpuAggregate] = {}
        self.jobs: dict[int, JobInfo] = {}
        self.snapshot = Snapshot()
        self.rounds = 0
        self._tail: KernelLogTail | None = None  # the kernel log, read incrementally
        self._xid_source: str | None = None  # "nvml-events" or "kernel-log", chosen in the first round
        self._xid_counts: dict[int, int] = {}  # XIDs per GPU minor since boot (for the exporter)
        self._owners_cache: tuple[int, dict[int, list[int]]] | None = None
        self._gpu_dir = owners.owner_dir(self._run_dir())
        self._gpu_dir_name = str(self._gpu_dir)
        self._lock = threading.Lock()
        self._store: Store | None = None  # opened by the first checkpoint, kept
        self._encoder = CheckpointEncoder()  # keeps the text of each series between checkpoints

    # -- state ---------------------------------------------------------------------------------------------------

    def restore(self) -> int:
        """Resume the aggregates of jobs that still own GPUs here (after a restart). Returns how many."""
        running = sorted({j for jobs in owners.owners(self._run_dir()).values() for j in jobs})
        infos = [info for info in (self._job(j) for j in running) if info is not None]
        store = Store.open(self.config.path("database", self.node))
        try:
            for cluster in sorted({i.cluster for i in infos}):
                ids = [i.job_id for i in infos if i.cluster == cluster]
                for agg in store.load_aggregates(cluster, self.node, ids):
                    self.aggregates[(agg.job_id, agg.minor)] = agg
        finally:
            store.close()
        return len(self.aggregates)

    def checkpoint(self) -> None:
        with self._lock:
            aggs = list(self.aggregates.values())
        if not aggs:
            return
        # one connection for the agent's life: opening the store each round (and the WAL checkpoint SQLite runs
        # when the last connection closes) cost more than the sampling round itself (bench/README.md)
        if self._store is None:
            self._store = Store.open(self.config.path("database", self.node))
        try:
            for cluster in sorted({self._cluster_of(a.job_id) for a in aggs}):
                self._store.save_aggregates(
                    cluster,
                    [a for a in aggs if self._cluster_of(a.job_id) == cluster],
                    time.time(),
                    self._encoder.encode,
                )
        except Exception:
            self.close()  # a fresh connection next time (the file may have been replaced or repaired)
            raise

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            with contextlib.suppress(Exception):
                store.close()

    def _cluster_of(self, job_id: int) -> str:
        info = self.jobs.get(job_id)
        return info.cluster if info else self.cluster

    def _owners(self) -> dict[int, list[int]]:
        """The owner files, re-read only when their directory changed (every write is a rename in it)."""
        gpu_dir = self._gpu_dir
        try:
            mtime = os.stat(self._gpu_dir_name).st_mtime_ns  # not Path.stat: this runs every round
        except FileNotFoundError:
            return {}
        # a directory changed within the filesystem's timestamp granularity may change again unseen: trust the
        # cache only for a directory that has been quiet for a second
        if (
            self._owners_cache is None
            or self._owners_cache[0] != mtime
            or time.time_ns() - mtime < 1_000_000_000
        ):
            self._owners_cache = (mtime, owners.owners(gpu_dir.parent))
        return self._owners_cache[1]

    def _run_dir(self) -> Path:
        return self.config.path("run_dir", self.node)

    def _job(self, job_id: int) -> JobInfo | None:
        if job_id in self.jobs:
            return self.jobs[job_id]
        path = spool_path(self.config.path("state_dir", self.node), self.cluster, self.node, job_id)
        if (
            not path.exists()
        ):  # the hooks' cluster name may differ from ours (no slurm.conf here): find it by node
            found = (
                sorted(path.parent.glob(f"*{path.name[path.name.index('.') :]}"))
                if path.parent.is_dir()
                else []
            )
            path = found[0] if found else path
        meta = read_job_meta(path)
        if meta is None:
            return None  # the prolog has not finished (or the job is not ours): next round
        baselines = read_baselines(path) or {}
        info = JobInfo(
            job_id,
            str(meta.get("cluster", self.cluster)),
            str(meta.get("user", "")),
            str(meta.get("account", "")),
            str(meta.get("partition", "")),
            float(meta.get("start_epoch_seconds", 0.0) or 0.0),  # type: ignore[arg-type]
            {m: b.energy_joules for m, b in baselines.items() if b.energy_joules is not None},
        )
        self.jobs[job_id] = info
        return info

    # -- one round -----------------------------------------------------------------------------------------------

    def round(self) -> Snapshot:
        began = time.monotonic()
        success: dict[str, bool] = {}
        try:
            owned = self._owners()
            success["owners"] = True
        except OSError as exc:
            self.log("warning", f"owner files unreadable: {exc}")
            owned, success["owners"] = {}, False
        by_minor = (
            {}
            if self.snapshot.reading is None
            else {g.minor: g.index for g in self.snapshot.reading.gpus if g.minor is not None}
        )
        since: dict[int, int] = {}
        floor_us = int((time.time() - SAMPLE_BUFFER_SECONDS) * 1e6)
        for (_job, minor), agg in self.aggregates.items():
            if minor in by_minor:
                since[by_minor[minor]] = min(
                    since.get(by_minor[minor], agg.last_sample_us), agg.last_sample_us
                )
        for index in by_minor.values():
            since.setdefault(index, floor_us)
        if self._xid_source is None:
            # NVML's event set where the driver offers it (XIDs as they happen, with the GPU handle); the
            # kernel log otherwise. The kernel log also keeps the per-GPU counts since boot for the exporter.
            why_not = self.backend.open_xid_events()
            self._xid_source = "kernel-log" if why_not else "nvml-events"
            self.log(
                "info", f"XID source: {self._xid_source}" + (f" (NVML events: {why_not})" if why_not else "")
            )
        reading = self.backend.read_node(
            samples_since_us=since if by_minor else floor_us,
            with_xid_events=self._xid_source == "nvml-events",
        )
        success["nvml"] = reading.error is None
        jobs_now: dict[int, JobInfo] = {}
        with self._lock:
            for gpu in reading.gpus:
                if gpu.minor is None or not gpu.ok:
                    continue
                for job_id in owned.get(gpu.minor, []):
                    info = self._job(job_id)
                    if info is None:
                        continue
                    jobs_now[job_id] = info
                    key = (job_id, gpu.minor)
                    agg = self.aggregates.get(key) or start(
                        job_id, self.node, gpu.minor, info.start_epoch_seconds
                    )
                    self.aggregates[key] = update(agg, gpu)
            finished = [k for k in self.aggregates if k[0] not in jobs_now]
        if finished:
            self.checkpoint()  # the epilog reads the last state; then we forget the job
            with self._lock:
                for key in finished:
                    self.aggregates.pop(key, None)
                    self.jobs.pop(key[0], None)
                    self._encoder.forget(key[0], self.node, key[1])
        success["xid"], xid_counts = self._watch_xids(reading, owned)
        self.rounds += 1
        if self.rounds % self.config.agent.checkpoint_every == 0:
            try:
                self.checkpoint()
                success["store"] = True
            except Exception as exc:
                success["store"] = False
                self.log("error", f"checkpoint failed: {exc}")
        self.snapshot = Snapshot(reading, owned, jobs_now, xid_counts, success, time.monotonic() - began)
        return self.snapshot

    def _watch_xids(self, reading: NodeReading, owned: dict[int, list[int]]) -> tuple[bool, dict[int, int]]:
        """New XIDs since the agent started: recorded against the job owning the GPU; a drain-class one drains the
        node (running jobs finish, no new ones start), through the same policy and circuit breaker as the hooks."""
        from slurmgpu.gpu.xid import parse_xid_lines, short_bus_id
        from slurmgpu.health.xid_source import kernel_log_path

        first = self._tail is None
        if self._tail is None:
            self._tail = KernelLogTail(kernel_log_path(self.config, self.node))
        ok = True
        try:
            text, restarted = self._tail.read_new()
        except OSError as exc:
            self.log("warning", f"kernel log unreadable: {exc}")
            text, restarted, ok = "", False, False
        logged = []
        if text:
            by_bus = {short_bus_id(g.pci_bus_id): g.minor for g in reading.gpus if g.pci_bus_id}
            logged = [XidEvent(code, by_bus.get(bus), bus, line) for bus, code, line in parse_xid_lines(text)]
        if restarted:
            self._xid_counts = {}
        for event in logged:
            if event.minor is not None:
                self._xid_counts[event.minor] = self._xid_counts.get(event.minor, 0) + 1
        new = logged
        if self._xid_source == "nvml-events":
            polled = reading.xid_events
            if polled is None:
                ok = False
                polled = ()
            new = []
            if polled:
                minor_of = {g.index: g.minor for g in reading.gpus}
                bus_of = {g.index: short_bus_id(g.pci_bus_id) for g in reading.gpus if g.pci_bus_id}
                new = [XidEvent(code, minor_of.get(i), bus_of.get(i, ""), "NVML event") for i, code in polled]
        if first:
            return ok, dict(
                self._xid_counts
            )  # what happened before the agent started is counted, not acted on
        for event in new:
            results = check_xids([event], self.config.health)
            jobs = owned.get(event.minor, []) if event.minor is not None else []
            job_id = jobs[0] if jobs else None
            self.log("warning", f"XID {event.code} on gpu{event.minor} (job {job_id})")
            if results:
                from slurmgpu.health.remediation import remediate

                remediate(
                    self.config,
                    cluster=self._cluster_of(job_id) if job_id is not None else self.cluster,
                    node=self.node,
                    source="agent",
                    job_id=job_id,
                    results=results,
                    reading=reading,
                    log=self.log,
                    update_last=False,
                )
        return ok, dict(self._xid_counts)

    def run_forever(self, stop: threading.Event) -> None:
        interval = self.config.agent.interval_seconds
        next_round = time.monotonic()
        while not stop.is_set():
            try:
                self.round()
            except Exception as exc:
                self.log("error", f"round failed: {type(exc).__name__}: {exc}")
            next_round += interval
            stop.wait(max(0.0, next_round - time.monotonic()))
        try:
            self.checkpoint()
        finally:
            self.close()
