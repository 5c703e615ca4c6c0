"""A pynvml-shaped module backed by a simulated node.

Same function names, argument order, return shapes, units, constants and `NVMLError_*` classes as nvidia-ml-py
(checked against the installed pynvml by tests/unit/test_fake_pynvml_surface.py), for every call our NVML gateway
makes. Readings come from `physics` over the node's load schedule at the wall-clock instant of the call.

Behaviour copied from the real library that matters to us:
- calls before nvmlInit raise NVMLError_Uninitialized;
- memory in bytes, power and power limit in milliwatts, energy in millijoules, accounting start time in
  microseconds since the epoch and duration in milliseconds (0 while the process still runs);
- page retirement is NotSupported on Ampere/Hopper, row remapping NotSupported on Volta;
- accounting queries are NotSupported while accounting mode is off, NotFound for a pid not in the buffer;
- a lost GPU raises NVMLError_GpuIsLost from every call, starting with nvmlDeviceGetHandleByIndex;
- an unresponsive GPU blocks inside the call (until the fault is cleared, at most an hour).
"""

from __future__ import annotations

import string
import sys
import time
from types import ModuleType, SimpleNamespace
from typing import Any, NoReturn

from slurmgpu.sim import physics
from slurmgpu.sim.state import SimNode

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
NVML_TOTAL_POWER_SAMPLES = 0
NVML_GPU_UTILIZATION_SAMPLES = 1
NVML_VALUE_TYPE_UNSIGNED_INT = 1

# The driver samples utilization every 1/6 s on data-center GPUs and keeps a ring buffer of recent samples.
SAMPLE_PERIOD_SECONDS = 1 / 6
SAMPLE_BUFFER = 120

nvmlEventTypeXidCriticalError = 0x0000000000000008

nvmlClocksEventReasonGpuIdle = 0x0000000000000001
nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020
nvmlClocksEventReasonHwThermalSlowdown = 0x0000000000000040
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x0000000000000080
nvmlClocksEventReasonNone = 0x0000000000000000
nvmlClocksThrottleReasonGpuIdle = nvmlClocksEventReasonGpuIdle
nvmlClocksThrottleReasonSwPowerCap = nvmlClocksEventReasonSwPowerCap
nvmlClocksThrottleReasonHwSlowdown = nvmlClocksEventReasonHwSlowdown
nvmlClocksThrottleReasonSwThermalSlowdown = nvmlClocksEventReasonSwThermalSlowdown
nvmlClocksThrottleReasonHwThermalSlowdown = nvmlClocksEventReasonHwThermalSlowdown
nvmlClocksThrottleReasonHwPowerBrakeSlowdown = nvmlClocksEventReasonHwPowerBrakeSlowdown
nvmlClocksThrottleReasonNone = nvmlClocksEventReasonNone

DRIVER_VERSION = "550.90.07"
_ERROR_TEXT = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml.NVMLError: NVMLError(code) yields the matching NVMLError_* subclass."""

    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012 - mirrors pynvml
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return _ERROR_TEXT.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


def _make_error_classes() -> None:
    # Same naming rule as pynvml: NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost.
    this = sys.modules[__name__]
    for name in [n for n in dir(this) if n.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        code = getattr(this, name)

        def new(cls: type, *args: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        cls = type(class_name, (NVMLError,), {"__new__": new})
        cls.__module__ = __name__
        setattr(this, class_name, cls)
        NVMLError._valClassMapping[code] = cls


_make_error_classes()
_EXPORTED = [
    n
    for n in dir(sys.modules[__name__])
    if n.startswith(("NVML_", "NVMLError", "nvmlClocks", "nvmlEventType"))
]


def _raise(code: int) -> NoReturn:
    raise NVMLError(code)


class _Handle:
    """Stands in for c_nvmlDevice_t: an opaque per-device handle."""

    __slots__ = ("ordinal",)

    def __init__(self, ordinal: int) -> None:
        self.ordinal = ordinal

    def __repr__(self) -> str:
        return f"<c_nvmlDevice_t (simulated) {self.ordinal}>"


class _EventSet:
    """Stands in for c_nvmlEventSet_t: which GPUs are registered, and how many of their XIDs were handed out."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}


class _Device:
    def __init__(self, sim: SimNode) -> None:
        self.sim = sim
        self.init_count = 0

    def check_init(self) -> None:
        if self.init_count <= 0:
            _raise(NVML_ERROR_UNINITIALIZED)

    def gpu(self, handle: _Handle) -> tuple[dict[str, Any], dict[str, Any]]:
        """The GPU's state; raises or blocks the way a faulty GPU does."""
        self.check_init()
        if not isinstance(handle, _Handle):
            _raise(NVML_ERROR_INVALID_ARGUMENT)
        deadline = time.monotonic() + 3600.0
        while True:
            state = self.sim.state()
            gpu = state["gpus"][handle.ordinal]
            faults = gpu["faults"]
            if faults["lost"]:
                _raise(NVML_ERROR_GPU_IS_LOST)
            if not faults["unresponsive"] or time.monotonic() > deadline:
                return state, gpu
            time.sleep(0.2)  # a hung call; the caller's deadline decides how long anyone waits


def make_module(sim: SimNode) -> ModuleType:
    """A fresh pynvml-shaped module whose devices are the simulated GPUs of `sim`'s node."""
    dev = _Device(sim)
    mod = ModuleType("pynvml", "pynvml-shaped simulator of node " + sim.node)
    this = sys.modules[__name__]
    for name in _EXPORTED:
        setattr(mod, name, getattr(this, name))

    def nvmlInit() -> None:
        sim.state()  # creates the node on first use
        dev.init_count += 1

    def nvmlShutdown() -> None:
        dev.check_init()
        dev.init_count -= 1

    def nvmlSystemGetDriverVersion() -> str:
        dev.check_init()
        return DRIVER_VERSION

    def nvmlDeviceGetCount() -> int:
        dev.check_init()
        return len(sim.state()["gpus"])

    def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
        dev.check_init()
        gpus = sim.state()["gpus"]
        if not 0 <= index < len(gpus):
            _raise(NVML_ERROR_INVALID_ARGUMENT)
        handle = _Handle(index)
        dev.gpu(handle)  # a lost GPU fails here already, as the real driver does
        return handle

    def nvmlDeviceGetMinorNumber(handle: _Handle) -> int:
        return int(dev.gpu(handle)[1]["minor"])

    def nvmlDeviceGetUUID(handle: _Handle) -> str:
        return str(dev.gpu(handle)[1]["uuid"])

    def nvmlDeviceGetName(handle: _Handle) -> str:
        return sim.model(dev.gpu(handle)[0]).nvml_name

    def nvmlDeviceGetPciInfo(handle: _Handle) -> SimpleNamespace:
        gpu = dev.gpu(handle)[1]
        bus_id = gpu["pci_bus_id"]
        domain, bus, rest = bus_id.split(":")
        return SimpleNamespace(
            busId=bus_id,
            busIdLegacy=bus_id[4:],
            domain=int(domain, 16),
            bus=int(bus, 16),
            device=int(rest.split(".")[0], 16),
            pciDeviceId=0x233010DE,
            pciSubSystemId=0x16C110DE,
        )

    def _now_load(handle: _Handle) -> tuple[dict[str, Any], dict[str, Any], float, float]:
        state, gpu = dev.gpu(handle)
        now = time.time()
        return state, gpu, now, physics.utilization_at(gpu["segments"], now)

    def nvmlDeviceGetMemoryInfo(handle: _Handle, version: int | None = None) -> SimpleNamespace:
        state, gpu, now, _ = _now_load(handle)
        total = sim.model(state).memory_total_bytes
        reserved = 0 if version is None else 512 * 1024 * 1024  # v2 reports driver-reserved memory
        used = physics.memory_at(gpu["segments"], now, total - reserved)
        if version is None:
            return SimpleNamespace(total=total, free=total - used, used=used)
        return SimpleNamespace(
            version=version, total=total, reserved=reserved, free=total - reserved - used, used=used
        )

    def nvmlDeviceGetUtilizationRates(handle: _Handle) -> SimpleNamespace:
        _, _, _, util = _now_load(handle)
        return SimpleNamespace(gpu=round(util), memory=round(util * 0.6))

    def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
        state, _, _, util = _now_load(handle)
        return round(sim.model(state).power_watts(util) * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(handle: _Handle) -> int:
        return int(sim.model(dev.gpu(handle)[0]).power_limit_watts * 1000)

    def nvmlDeviceGetPowerManagementLimit(handle: _Handle) -> int:
        return nvmlDeviceGetEnforcedPowerLimit(handle)

    def nvmlDeviceGetTotalEnergyConsumption(handle: _Handle) -> int:
        _, gpu, now, _ = _now_load(handle)
        return int(sim.energy_counter_joules(gpu, now) * 1000)

    def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
        state, gpu, _, util = _now_load(handle)
        if sensor != NVML_TEMPERATURE_GPU:
            _raise(NVML_ERROR_INVALID_ARGUMENT)
        if gpu["faults"]["thermal"]:
            return 94
        return round(sim.model(state).temperature_celsius(util))

    def nvmlDeviceGetClockInfo(handle: _Handle, clock_type: int) -> int:
        state, gpu, _, util = _now_load(handle)
        if clock_type != NVML_CLOCK_SM:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        model = sim.model(state)
        if util <= 0:
            return model.sm_clock_idle_mhz
        return model.sm_clock_max_mhz // 2 if gpu["faults"]["thermal"] else model.sm_clock_max_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(handle: _Handle) -> int:
        _, gpu, _, util = _now_load(handle)
        reasons = nvmlClocksEventReasonGpuIdle if util <= 0 else nvmlClocksEventReasonNone
        if gpu["faults"]["thermal"]:
            reasons |= nvmlClocksEventReasonHwThermalSlowdown | nvmlClocksEventReasonHwSlowdown
        return reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(handle: _Handle) -> int:
        return nvmlDeviceGetCurrentClocksEventReasons(handle)  # the pre-R535 name of the same call

    def nvmlDeviceGetTotalEccErrors(handle: _Handle, error_type: int, counter_type: int) -> int:
        faults = dev.gpu(handle)[1]["faults"]
        kind = {
            NVML_MEMORY_ERROR_TYPE_CORRECTED: "corrected",
            NVML_MEMORY_ERROR_TYPE_UNCORRECTED: "uncorrected",
        }
        counter = {NVML_VOLATILE_ECC: "volatile", NVML_AGGREGATE_ECC: "aggregate"}
        if error_type not in kind or counter_type not in counter:
            _raise(NVML_ERROR_INVALID_ARGUMENT)
        return int(faults[f"ecc_{counter[counter_type]}_{kind[error_type]}"])

    def nvmlDeviceGetRetiredPages(handle: _Handle, source_filter: int) -> list[int]:
        state, gpu = dev.gpu(handle)
        if not sim.model(state).page_retirement:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        key = {
            NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: "retired_single_bit",
            NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: "retired_double_bit",
        }.get(source_filter)
        if key is None:
            _raise(NVML_ERROR_INVALID_ARGUMENT)
        return [0x1000 * (i + 1) for i in range(int(gpu["faults"][str(key)]))]  # page addresses

    def nvmlDeviceGetRetiredPagesPendingStatus(handle: _Handle) -> int:
        state, gpu = dev.gpu(handle)
        if not sim.model(state).page_retirement:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        return NVML_FEATURE_ENABLED if gpu["faults"]["retired_pending"] else NVML_FEATURE_DISABLED

    def nvmlDeviceGetRemappedRows(handle: _Handle) -> tuple[int, int, int, int]:
        state, gpu = dev.gpu(handle)
        if not sim.model(state).row_remapping:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        f = gpu["faults"]
        return (
            int(f["remap_correctable"]),
            int(f["remap_uncorrectable"]),
            int(f["remap_pending"]),
            int(f["remap_failure"]),
        )

    def _pcie(handle: _Handle, current: bool, width: bool) -> int:
        state, gpu = dev.gpu(handle)
        model = sim.model(state)
        value = model.pcie_width_max if width else model.pcie_gen_max
        if current and gpu["faults"]["pcie_degraded"]:
            value = value // 2 if width else max(1, value - 2)
        return value

    def nvmlDeviceGetCurrPcieLinkGeneration(handle: _Handle) -> int:
        return _pcie(handle, True, False)

    def nvmlDeviceGetMaxPcieLinkGeneration(handle: _Handle) -> int:
        return _pcie(handle, False, False)

    def nvmlDeviceGetCurrPcieLinkWidth(handle: _Handle) -> int:
        return _pcie(handle, True, True)

    def nvmlDeviceGetMaxPcieLinkWidth(handle: _Handle) -> int:
        return _pcie(handle, False, True)

    def nvmlDeviceGetPersistenceMode(handle: _Handle) -> int:
        off = dev.gpu(handle)[1]["faults"]["persistence_off"]
        return NVML_FEATURE_DISABLED if off else NVML_FEATURE_ENABLED

    def nvmlDeviceGetAccountingMode(handle: _Handle) -> int:
        state, _ = dev.gpu(handle)
        return NVML_FEATURE_ENABLED if state["accounting_mode"] else NVML_FEATURE_DISABLED

    def _accounting_segments(handle: _Handle) -> list[physics.Segment]:
        state, gpu = dev.gpu(handle)
        if not state["accounting_mode"]:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        now = time.time()
        return [s for s in gpu["segments"] if s.start_epoch_seconds <= now][
            -4000:
        ]  # the driver's buffer size

    def nvmlDeviceGetAccountingBufferSize(handle: _Handle) -> int:
        _accounting_segments(handle)
        return 4000

    def nvmlDeviceGetAccountingPids(handle: _Handle) -> list[int]:
        return [s.pid for s in _accounting_segments(handle)]

    def nvmlDeviceGetAccountingStats(handle: _Handle, pid: int) -> SimpleNamespace:
        matches = [s for s in _accounting_segments(handle) if s.pid == pid]
        if not matches:
            _raise(NVML_ERROR_NOT_FOUND)
        s = matches[-1]  # like the driver: the newest process with that pid
        running = s.end_epoch_seconds > time.time()
        util = physics.process_utilization_pct(s)
        return SimpleNamespace(
            gpuUtilization=round(util),
            memoryUtilization=round(util * 0.6),
            maxMemoryUsage=s.memory_bytes,
            time=0 if running else round((s.end_epoch_seconds - s.start_epoch_seconds) * 1000),
            startTime=int(s.start_epoch_seconds * 1e6),
            isRunning=1 if running else 0,
            reserved=[0] * 5,
        )

    def nvmlDeviceGetSamples(
        handle: _Handle, sampling_type: int, timeStamp: int
    ) -> tuple[int, list[SimpleNamespace]]:
        """Utilization samples newer than `timeStamp` (microseconds): each is the percent of time the GPU was busy
        over the sample period ending at its timestamp. NotFound when there is none, like the driver."""
        _, gpu, now, _ = _now_load(handle)
        if sampling_type != NVML_GPU_UTILIZATION_SAMPLES:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        period = SAMPLE_PERIOD_SECONDS
        last = int(now / period)
        first = max(last - SAMPLE_BUFFER + 1, int(timeStamp / 1e6 / period) + 1)
        samples = []
        for k in range(first, last + 1):
            end = k * period
            busy = physics.utilization_seconds(gpu["segments"], end - period, end) / period
            samples.append(
                SimpleNamespace(timeStamp=int(end * 1e6), sampleValue=SimpleNamespace(uiVal=round(busy)))
            )
        if not samples:
            _raise(NVML_ERROR_NOT_FOUND)
        return NVML_VALUE_TYPE_UNSIGNED_INT, samples

    def nvmlDeviceGetIndex(handle: _Handle) -> int:
        dev.check_init()
        return handle.ordinal

    def nvmlDeviceGetSupportedEventTypes(handle: _Handle) -> int:
        dev.gpu(handle)
        return nvmlEventTypeXidCriticalError

    def nvmlEventSetCreate() -> _EventSet:
        dev.check_init()
        return _EventSet()

    def nvmlDeviceRegisterEvents(handle: _Handle, eventTypes: int, eventSet: _EventSet) -> None:
        _, gpu = dev.gpu(handle)
        if not eventTypes & nvmlEventTypeXidCriticalError or not sim.config.xid_events:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        eventSet.seen[handle.ordinal] = len(gpu["faults"]["xids"])  # only XIDs from now on, like the driver

    def nvmlEventSetWait(eventSet: _EventSet, timeoutms: int) -> SimpleNamespace:
        """The next XID on a registered GPU; NVMLError_Timeout when none comes within timeoutms."""
        dev.check_init()
        deadline = time.monotonic() + timeoutms / 1000
        while True:
            state = sim.state()
            for ordinal, seen in eventSet.seen.items():
                xids = state["gpus"][ordinal]["faults"]["xids"]
                if len(xids) > seen:
                    eventSet.seen[ordinal] = seen + 1
                    return SimpleNamespace(
                        device=_Handle(ordinal),
                        eventType=nvmlEventTypeXidCriticalError,
                        eventData=int(xids[seen][1]),
                        gpuInstanceId=0xFFFFFFFF,
                        computeInstanceId=0xFFFFFFFF,
                    )
            if time.monotonic() >= deadline:
                _raise(NVML_ERROR_TIMEOUT)
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def nvmlEventSetWait_v2(eventSet: _EventSet, timeoutms: int) -> SimpleNamespace:
        return nvmlEventSetWait(eventSet, timeoutms)

    def nvmlEventSetFree(eventSet: _EventSet) -> None:
        eventSet.seen.clear()

    def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[SimpleNamespace]:
        _, gpu, now, _ = _now_load(handle)
        return [
            SimpleNamespace(
                pid=s.pid,
                usedGpuMemory=s.memory_bytes,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
            for s in gpu["segments"]
            if s.active_at(now)
        ]

    for fn in list(locals().values()):
        if callable(fn) and getattr(fn, "__name__", "").startswith("nvml"):
            setattr(mod, fn.__name__, fn)
    return mod
