"""The NVML gateway: the only module that calls pynvml.

It takes the pynvml module as a parameter (the real nvidia-ml-py by default; the simulator's pynvml-shaped module in
tests and demos), so this exact code runs against both. Rules it keeps:
- `NVMLError_NotSupported` becomes None, never an exception.
- One failing or lost GPU never aborts the others: it becomes a GpuReading whose status says what failed.
- Every NVML call runs on a worker thread under a deadline, because NVML calls can hang on a failing GPU; a GPU that
  misses the deadline is reported "unresponsive" and the caller goes on (the thread is a daemon and is abandoned).

One worker reads all GPUs in turn: on a healthy node that is one thread wake per round, which matters for the agent
(thread hand-offs cost more than the NVML calls on a fast driver). If the sweep is slow -- a GPU may be hanging --
helper workers join after a short while and take the GPUs nobody has started, so a hung GPU delays only itself.
A GPU whose call is still hung from an earlier read is reported unresponsive at once, without another thread.
"""

from __future__ import annotations

import _thread
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from queue import SimpleQueue
from types import ModuleType
from typing import Any

from slurmgpu.frozen import build
from slurmgpu.gpu.types import AccountingStat, GpuProcess, GpuReading, GpuStatus, NodeReading

_INIT_LOCK = threading.Lock()
# how long one worker may take over the whole sweep before helpers join it (capped at a quarter of the timeout)
HEDGE_SECONDS = 0.5


class _GpuLost(Exception):
    pass


class _Flag:
    """A one-shot threading.Event on a bare lock (held while unset). threading.Event is pure Python over a
    Condition (a lock allocated per wait, a waiter list); the agent pays a set and a wait on every round, with the
    interpreter's caches cold after ten seconds asleep, where every line of Python costs more than usual."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float) -> bool:
        if not self._lock.acquire(True, max(0.0, timeout)):
            return False
        with contextlib.suppress(RuntimeError):  # set twice meanwhile: it stays set either way
            self._lock.release()
        return True


class _Worker:
    """A daemon thread that runs submitted calls in order. Kept across rounds (the agent reads every few seconds;
    a thread per call per GPU would cost more than the NVML calls). A worker stuck in a hung NVML call is retired
    by its owner and replaced: it exits once the call returns; being a daemon, it never holds up the process's
    exit."""

    def __init__(self, name: str) -> None:
        self._tasks: SimpleQueue[tuple[Callable[[], None], _Flag]] = SimpleQueue()
        self._retired = False
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[[], None]) -> _Flag:
        done = _Flag()
        self._tasks.put((fn, done))
        return done

    def retire(self) -> None:
        self._retired = True

    def _run(self) -> None:
        while not self._retired:
            fn, done = self._tasks.get()
            try:
                fn()
            except BaseException:  # noqa: S110 - the submitter reads results from its own box, not from here
                pass
            finally:
                done.set()


class _Sweep:
    """One read of every GPU, shared by the workers taking part: each claims the next unstarted GPU."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.count = -1  # set by the lead once nvmlDeviceGetCount answered
        self.error: str | None = None  # init or count failed: no GPU read
        self.driver_version: str | None = None
        self.xid_events: list[tuple[int, int]] | None = None
        self.pending: deque[int] = deque()
        self.partial: list[dict[str, Any]] = []
        self.results: list[GpuReading | None] = []
        self.done: list[bool] = []
        self.finished = _Flag()
        self._remaining = 0
        self._lock = threading.Lock()

    def plan(self, count: int, skip: dict[int, GpuReading]) -> None:
        self.partial = [{} for _ in range(count)]
        self.results = [skip.get(i) for i in range(count)]
        self.done = [i in skip for i in range(count)]
        self.pending = deque(i for i in range(count) if i not in skip)
        self._remaining = len(self.pending)
        self.count = count  # last: helpers look at it to know the plan is ready
        if not self._remaining:
            self.finished.set()

    def work(self, read: Callable[[int, dict[str, Any], list[GpuReading | None]], None]) -> None:
        while True:
            try:
                index = self.pending.popleft()  # atomic: no two workers read the same GPU
            except IndexError:
                return
            try:
                read(index, self.partial[index], self.results)
            except Exception as exc:  # read() turns failures into readings; this is the net under it
                if self.results[index] is None:
                    self.results[index] = _partial(
                        index, self.partial[index], "error", f"{type(exc).__name__}: {exc}"
                    )
            finally:
                self.done[index] = True
                with self._lock:
                    self._remaining -= 1
                    if self._remaining == 0:
                        self.finished.set()

    def fail(self, error: str) -> None:
        self.error = error
        self.finished.set()


def load_pynvml() -> ModuleType:
    import pynvml

    module: ModuleType = pynvml
    return module


class NvmlBackend:
    """Reads GPUs through a pynvml-shaped module."""

    def __init__(self, nvml: ModuleType | None = None, *, timeout_seconds: float = 5.0) -> None:
        self._nvml = nvml if nvml is not None else load_pynvml()
        self._timeout = timeout_seconds
        self._hedge = min(HEDGE_SECONDS, timeout_seconds / 4)
        self._initialised = False
        self._driver_version: str | None = None
        self._workers: dict[str, _Worker] = {}
        self._event_set: Any = None
        self._hung: dict[
            int, tuple[_Sweep, float]
        ] = {}  # GPU index -> the sweep whose call on it never returned
        nv = self._nvml
        self._ecc_queries = tuple(  # (field, error type, counter type) for nvmlDeviceGetTotalEccErrors
            (f"ecc_{counter_name}_{kind_name}", kind, counter)
            for kind, kind_name in (
                (nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, "corrected"),
                (nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, "uncorrected"),
            )
            for counter, counter_name in (
                (nv.NVML_VOLATILE_ECC, "volatile"),
                (nv.NVML_AGGREGATE_ECC, "aggregate"),
            )
        )

    def read_node(
        self,
        *,
        with_accounting: bool = False,
        with_processes: bool = False,
        samples_since_us: dict[int, int] | int | None = None,
        with_xid_events: bool = False,
    ) -> NodeReading:
        """Read every GPU of the node, time-boxed. With `with_xid_events`, also drain the XID event set opened by
        `open_xid_events` (in the same worker wake; NodeReading.xid_events is None when that failed)."""
        began = time.monotonic()
        deadline = began + self._timeout
        sweep = _Sweep()

        def read(index: int, fields: dict[str, Any], results: list[GpuReading | None]) -> None:
            since = (
                samples_since_us
                if samples_since_us is None or isinstance(samples_since_us, int)
                else (samples_since_us.get(index, 0))
            )
            self._read_into(index, fields, results, with_accounting, with_processes, since)

        def lead() -> None:
            try:
                self._init()
                count = int(self._nvml.nvmlDeviceGetCount())
                if self._driver_version is None:  # fixed while NVML is up: the driver cannot be unloaded
                    self._driver_version = self._optional(self._nvml.nvmlSystemGetDriverVersion)
                sweep.driver_version = self._driver_version
                if with_xid_events:
                    sweep.xid_events = self._drain_events()
                skip = self._still_hung(count)
            except Exception as exc:  # NVMLError, or anything else the library raised: a failed read, said so
                sweep.fail(f"{type(exc).__name__}: {exc}")
                return
            sweep.plan(count, skip)
            sweep.work(read)

        running = {"lead": self._worker("lead").submit(lead)}
        if not sweep.finished.wait(self._hedge) and sweep.count > 0:
            # slow: perhaps a hung GPU. Helpers take the GPUs the lead has not started.
            for n in range(min(len(sweep.pending), sweep.count - 1)):
                running[f"helper{n}"] = self._worker(f"helper{n}").submit(lambda: sweep.work(read))
        if not sweep.finished.wait(max(0.0, deadline - time.monotonic())):
            # a worker still busy now is stuck in NVML (init, count or a GPU): retire it, a fresh one next time.
            # (Once the sweep has finished, a worker whose task has not quite returned is not stuck.)
            for name, event in running.items():
                if not event.is_set():
                    self._workers.pop(name).retire()
        if sweep.count < 0:
            return NodeReading(
                gpus=(),
                error=sweep.error or f"nvmlDeviceGetCount: no answer from NVML within {self._timeout:g} s",
            )
        gpus = []
        for index in range(sweep.count):
            result = sweep.results[index]
            if result is None:  # still blocked in NVML: keep what it had read so far (often the minor number)
                self._hung[index] = (sweep, sweep.started_at)
                result = _partial(
                    index,
                    sweep.partial[index],
                    "unresponsive",
                    f"no answer from NVML within {self._timeout:g} s",
                )
            gpus.append(result)
        return NodeReading(
            gpus=tuple(_infer_lone_minor(gpus)),
            driver_version=sweep.driver_version,
            xid_events=None if sweep.xid_events is None else tuple(sweep.xid_events),
        )

    # -- internals ---------------------------------------------------------------------------------------------

    def _still_hung(self, count: int) -> dict[int, GpuReading]:
        """GPUs whose call from an earlier read has not returned: reported without asking again (another thread
        would only hang beside the first)."""
        out = {}
        for index, (old, since) in list(self._hung.items()):
            if old.done[index] or index >= count:
                del self._hung[index]
                continue
            out[index] = _partial(
                index,
                old.partial[index],
                "unresponsive",
                f"no answer from NVML since {time.strftime('%H:%M:%S', time.localtime(since))}",
            )
        return out

    def _init(self) -> None:
        if self._initialised:
            return
        with _INIT_LOCK:
            if not self._initialised:
                self._nvml.nvmlInit()
                self._initialised = True

    def shutdown(self) -> None:
        if self._initialised:
            self._optional(self._nvml.nvmlShutdown)
            self._initialised = False
            self._driver_version = None

    def _worker(self, name: str) -> _Worker:
        worker = self._workers.get(name)
        if worker is None:
            worker = self._workers[name] = _Worker(f"nvml-{name}")
        return worker

    def _call_boxed(self, fn: Any, deadline: float) -> str | None:
        """Run fn on the lead worker; return an error text, or None when it returned in time."""
        box: dict[str, BaseException] = {}

        def target() -> None:
            try:
                fn()
            except BaseException as exc:
                box["error"] = exc

        if not self._worker("lead").submit(target).wait(max(0.0, deadline - time.monotonic())):
            self._workers.pop("lead").retire()
            return f"no answer from NVML within {self._timeout:g} s"
        if "error" in box:
            return f"{type(box['error']).__name__}: {box['error']}"
        return None

    def _optional(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return None

    def _read_into(
        self,
        index: int,
        fields: dict[str, Any],
        results: list[GpuReading | None],
        with_accounting: bool,
        with_processes: bool,
        samples_since_us: int | None = None,
    ) -> None:
        nv = self._nvml
        failed: list[str] = []

        def q(name: str, fn: Any, *args: Any) -> Any:
            """One NVML query: NotSupported -> None; lost -> abort this GPU; other errors -> None + noted."""
            try:
                return fn(*args)
            except nv.NVMLError_NotSupported:
                return None
            except (nv.NVMLError_GpuIsLost, nv.NVMLError_Unknown) as exc:
                raise _GpuLost(str(exc)) from exc
            except nv.NVMLError as exc:
                failed.append(f"{name}: {exc}")
                return None

        try:
            handle = q("handle", nv.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                results[index] = GpuReading(
                    index=index,
                    timestamp_epoch_seconds=time.time(),
                    status="error",
                    detail="; ".join(failed) or "no handle",
                )
                return
            fields["minor"] = q("minor", nv.nvmlDeviceGetMinorNumber, handle)
            fields["uuid"] = q("uuid", nv.nvmlDeviceGetUUID, handle)
            pci = q("pci", nv.nvmlDeviceGetPciInfo, handle)
            fields["pci_bus_id"] = pci.busId if pci is not None else None
            reading = self._read_fields(handle, fields, q, with_accounting, with_processes, samples_since_us)
        except _GpuLost as exc:
            results[index] = _partial(index, fields, "lost", f"NVML: {exc}")
            return
        except Exception as exc:
            results[index] = GpuReading(
                index=index,
                timestamp_epoch_seconds=time.time(),
                status="error",
                detail=f"{type(exc).__name__}: {exc}",
                minor=fields.get("minor"),
            )
            return
        reading["index"] = index
        reading["failed_fields"] = tuple(failed)
        results[index] = build(GpuReading, reading)  # the constructor's cost, x40 fields x GPUs, every round

    def _read_fields(
        self,
        handle: Any,
        fields: dict[str, Any],
        q: Any,
        with_accounting: bool,
        with_processes: bool,
        samples_since_us: int | None = None,
    ) -> dict[str, Any]:
        nv = self._nvml
        out: dict[str, Any] = {
            "minor": fields["minor"],
            "uuid": fields["uuid"],
            "pci_bus_id": fields["pci_bus_id"],
        }
        out["name"] = q("name", nv.nvmlDeviceGetName, handle)
        mem = q("memory", nv.nvmlDeviceGetMemoryInfo, handle)
        if mem is not None:
            out["memory_used_bytes"], out["memory_total_bytes"] = int(mem.used), int(mem.total)
        util = q("utilization", nv.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            out["utilization_pct"], out["memory_utilization_pct"] = int(util.gpu), int(util.memory)
        out["power_watts"] = _scale(q("power", nv.nvmlDeviceGetPowerUsage, handle), 1e-3)  # mW
        out["power_limit_watts"] = _scale(q("power_limit", nv.nvmlDeviceGetEnforcedPowerLimit, handle), 1e-3)
        out["energy_joules"] = _scale(q("energy", nv.nvmlDeviceGetTotalEnergyConsumption, handle), 1e-3)  # mJ
        out["temperature_celsius"] = q(
            "temperature", nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU
        )
        out["sm_clock_mhz"] = q("sm_clock", nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM)
        out["clock_event_reasons"] = self._clock_event_reasons(handle, q)
        for name, kind, counter in self._ecc_queries:
            out[name] = q(name, nv.nvmlDeviceGetTotalEccErrors, handle, kind, counter)
        sbe = q(
            "retired_pages_sbe",
            nv.nvmlDeviceGetRetiredPages,
            handle,
            nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
        )
        dbe = q(
            "retired_pages_dbe",
            nv.nvmlDeviceGetRetiredPages,
            handle,
            nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
        )
        out["retired_pages_single_bit"] = None if sbe is None else len(sbe)
        out["retired_pages_double_bit"] = None if dbe is None else len(dbe)
        pending = q("retired_pages_pending", nv.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        out["retired_pages_pending"] = None if pending is None else pending == nv.NVML_FEATURE_ENABLED
        remap = q("remapped_rows", nv.nvmlDeviceGetRemappedRows, handle)
        if remap is not None:
            corr, unc, is_pending, failure = remap
            out.update(
                remapped_rows_correctable=int(corr),
                remapped_rows_uncorrectable=int(unc),
                remapped_rows_pending=bool(is_pending),
                remapped_rows_failure=bool(failure),
            )
        out["pcie_link_gen"] = q("pcie_gen", nv.nvmlDeviceGetCurrPcieLinkGeneration, handle)
        out["pcie_link_gen_max"] = q("pcie_gen_max", nv.nvmlDeviceGetMaxPcieLinkGeneration, handle)
        out["pcie_link_width"] = q("pcie_width", nv.nvmlDeviceGetCurrPcieLinkWidth, handle)
        out["pcie_link_width_max"] = q("pcie_width_max", nv.nvmlDeviceGetMaxPcieLinkWidth, handle)
        persistence = q("persistence_mode", nv.nvmlDeviceGetPersistenceMode, handle)
        out["persistence_mode"] = None if persistence is None else persistence == nv.NVML_FEATURE_ENABLED
        accounting = q("accounting_mode", nv.nvmlDeviceGetAccountingMode, handle)
        out["accounting_mode"] = None if accounting is None else accounting == nv.NVML_FEATURE_ENABLED
        if with_processes:
            procs = q("processes", nv.nvmlDeviceGetComputeRunningProcesses, handle)
            if procs is not None:
                out["processes"] = tuple(
                    GpuProcess(
                        pid=int(p.pid),
                        used_memory_bytes=None if p.usedGpuMemory is None else int(p.usedGpuMemory),
                    )
                    for p in procs
                )
        if samples_since_us is not None:
            out["utilization_samples"] = self._utilization_samples(handle, samples_since_us, q)
        if with_accounting and out["accounting_mode"]:
            out["accounting"] = self._accounting(handle, q)
        out["timestamp_epoch_seconds"] = time.time()
        return out

    def _clock_event_reasons(self, handle: Any, q: Any) -> int | None:
        # nvmlDeviceGetCurrentClocksEventReasons replaced ...ThrottleReasons (same bits); older drivers lack it.
        nv = self._nvml
        fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if fn is not None:
            try:
                value = fn(handle)
                return None if value is None else int(value)
            except nv.NVMLError_FunctionNotFound:
                pass
            except nv.NVMLError_NotSupported:
                return None
        value = q("clock_event_reasons", nv.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
        return None if value is None else int(value)

    def open_xid_events(self) -> str | None:
        """Register every GPU for XID events (nvmlEventTypeXidCriticalError). None when it worked, else why not
        (not supported, a lost GPU, a timeout): the caller falls back to the kernel log."""
        nv = self._nvml
        deadline = time.monotonic() + self._timeout

        def register() -> None:
            event_set = nv.nvmlEventSetCreate()
            for index in range(nv.nvmlDeviceGetCount()):
                nv.nvmlDeviceRegisterEvents(
                    nv.nvmlDeviceGetHandleByIndex(index), nv.nvmlEventTypeXidCriticalError, event_set
                )
            self._event_set = event_set

        err = self._call_boxed(self._init, deadline) or self._call_boxed(register, deadline)
        return err

    def poll_xid_events(self) -> list[tuple[int, int]] | None:
        """XIDs that arrived since the last poll, as (NVML index, code), without waiting; None if the wait hung
        or failed (time-boxed like every call). The agent gets them from `read_node(with_xid_events=True)`."""
        box: dict[str, list[tuple[int, int]] | None] = {}
        if self._call_boxed(
            lambda: box.setdefault("events", self._drain_events()), time.monotonic() + self._timeout
        ):
            return None
        return box.get("events")

    def _drain_events(self) -> list[tuple[int, int]] | None:
        """Everything waiting in the event set (nvmlEventSetWait with a zero timeout); None without a set or when
        the driver failed (the caller notes the collector failure; the next poll tries again)."""
        nv = self._nvml
        if self._event_set is None:
            return None
        events: list[tuple[int, int]] = []
        try:
            while True:
                try:
                    data = nv.nvmlEventSetWait(self._event_set, 0)
                except nv.NVMLError_Timeout:
                    return events
                if data.eventType & nv.nvmlEventTypeXidCriticalError:
                    events.append((int(nv.nvmlDeviceGetIndex(data.device)), int(data.eventData)))
        except nv.NVMLError:
            return None

    def _utilization_samples(self, handle: Any, since_us: int, q: Any) -> tuple[tuple[int, int], ...] | None:
        """The driver's utilization history since `since_us` (NotFound: no sample since then)."""
        nv = self._nvml
        try:
            _, samples = nv.nvmlDeviceGetSamples(handle, nv.NVML_GPU_UTILIZATION_SAMPLES, since_us)
        except nv.NVMLError_NotFound:
            return ()
        except nv.NVMLError_NotSupported:
            return None
        return tuple(
            (int(s.timeStamp), int(s.sampleValue.uiVal)) for s in samples if int(s.timeStamp) > since_us
        )

    def _accounting(self, handle: Any, q: Any) -> tuple[AccountingStat, ...] | None:
        nv = self._nvml
        pids = q("accounting_pids", nv.nvmlDeviceGetAccountingPids, handle)
        if pids is None:
            return None
        stats = []
        for pid in pids:
            try:
                s = nv.nvmlDeviceGetAccountingStats(handle, pid)
            except (nv.NVMLError_NotFound, nv.NVMLError_NotSupported):
                continue  # the pid left the driver's circular buffer between the two calls
            stats.append(
                AccountingStat(
                    pid=int(pid),
                    gpu_utilization_pct=_available(s.gpuUtilization),
                    memory_utilization_pct=_available(s.memoryUtilization),
                    max_memory_bytes=None if s.maxMemoryUsage is None else int(s.maxMemoryUsage),
                    start_time_epoch_seconds=int(s.startTime) / 1e6,  # microseconds since the epoch
                    active_seconds=None
                    if s.isRunning
                    else int(s.time) / 1e3,  # ms; NVML reports 0 while running
                    is_running=bool(s.isRunning),
                )
            )
        return tuple(stats)


def _partial(index: int, fields: dict[str, Any], status: GpuStatus, detail: str) -> GpuReading:
    """A GPU that failed part-way: its status, and the identity fields read before it failed."""
    return GpuReading(
        index=index,
        timestamp_epoch_seconds=time.time(),
        status=status,
        detail=detail,
        minor=fields.get("minor"),
        uuid=fields.get("uuid"),
        pci_bus_id=fields.get("pci_bus_id"),
    )


def _infer_lone_minor(gpus: list[GpuReading]) -> list[GpuReading]:
    """A lost GPU often fails before its minor number can be read. When exactly one GPU lacks a minor and exactly
    one of 0..count-1 is unaccounted for, that must be its minor: say so in the detail."""
    unknown = [g for g in gpus if g.minor is None]
    if not unknown:
        return gpus
    missing = set(range(len(gpus))) - {g.minor for g in gpus if g.minor is not None}
    if len(unknown) != 1 or len(missing) != 1:
        return gpus
    lone = unknown[0]
    guess = missing.pop()
    fixed = replace(
        lone, minor=guess, detail=f"{lone.detail} (minor {guess} inferred: the only one not seen)"
    )
    return [fixed if g is lone else g for g in gpus]


_UINT_NOT_AVAILABLE = 0xFFFFFFFF


def _available(value: Any) -> int | None:
    return None if value is None or int(value) == _UINT_NOT_AVAILABLE else int(value)


def _scale(value: Any, factor: float) -> float | None:
    return None if value is None else float(value) * factor
