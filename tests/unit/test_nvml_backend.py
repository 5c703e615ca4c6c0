"""The NVML gateway against the simulator: mapping by minor, per-GPU failure as data, time boxes, units."""

from __future__ import annotations

import dataclasses
import threading
import time

from tests.conftest import backend_for, sim_node

from slurmgpu.gpu.nvml import NvmlBackend
from slurmgpu.gpu.types import GpuReading
from slurmgpu.sim import control
from slurmgpu.sim.fake_pynvml import make_module
from slurmgpu.sim.models import MIB, MODELS

GIB = 1 << 30


def test_minors_permuted_against_ordinals_map_by_minor(tmp_path) -> None:
    node = sim_node(tmp_path, minor_order=(2, 0, 3, 1))
    now = time.time()
    control.add_load(node, (3,), 90, 10 * GIB, 4242, now, now + 60)  # Slurm's GPU 3 is NVML ordinal 2
    reading = backend_for(node).read_node(with_processes=True)
    assert [g.minor for g in reading.gpus] == [2, 0, 3, 1]
    found, missing = reading.select((3, 1))
    assert missing == ()
    assert found[3].index == 2
    assert found[3].utilization_pct == 90
    assert found[3].processes is not None and found[3].processes[0].pid == 4242
    assert found[1].utilization_pct == 0 and found[1].processes == ()


def test_units_and_model_figures(tmp_path) -> None:
    node = sim_node(tmp_path)
    gpu = backend_for(node).read_node().gpus[0]
    h100 = MODELS["H100-SXM5-80GB"]
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_total_bytes == 81559 * MIB
    assert gpu.power_limit_watts == 700.0
    assert gpu.power_watts == h100.idle_power_watts == 70.0
    assert gpu.energy_joules is not None and gpu.energy_joules > 0
    assert gpu.pcie_link_gen == gpu.pcie_link_gen_max == 5
    assert gpu.clock_event_reasons == 1  # GpuIdle
    assert gpu.persistence_mode is True and gpu.accounting_mode is True


def test_not_supported_becomes_none_per_architecture(tmp_path) -> None:
    hopper = backend_for(sim_node(tmp_path, "h")).read_node().gpus[0]
    assert hopper.retired_pages_pending is None and hopper.retired_pages_double_bit is None
    assert hopper.remapped_rows_pending is False
    volta = backend_for(sim_node(tmp_path, "v", model="V100-SXM2-32GB")).read_node().gpus[0]
    assert volta.remapped_rows_pending is None and volta.remapped_rows_failure is None
    assert volta.retired_pages_pending is False
    assert hopper.failed_fields == () and volta.failed_fields == ()


def test_lost_gpu_is_data_and_the_others_are_read(tmp_path) -> None:
    node = sim_node(tmp_path)
    control.inject_fault(node, 1, "lost")
    reading = backend_for(node).read_node()
    status = {g.index: g.status for g in reading.gpus}
    assert status == {0: "ok", 1: "lost", 2: "ok", 3: "ok"}
    assert "lost" in reading.gpus[1].detail.lower()


def test_unresponsive_gpu_is_time_boxed(tmp_path) -> None:
    node = sim_node(tmp_path)
    control.inject_fault(node, 2, "unresponsive")
    started = time.monotonic()
    reading = backend_for(node, timeout=0.5).read_node()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert [g.status for g in reading.gpus] == ["ok", "ok", "unresponsive", "ok"]
    control.clear_faults(node)


def test_accounting_stats_follow_the_process(tmp_path) -> None:
    node = sim_node(tmp_path)
    now = time.time()
    control.add_load(node, (0,), 75, 3 * GIB, 111, now - 10, now - 4)
    gpu = backend_for(node).read_node(with_accounting=True).gpus[0]
    assert gpu.accounting is not None
    (stat,) = gpu.accounting
    assert stat.pid == 111 and stat.gpu_utilization_pct == 75 and stat.max_memory_bytes == 3 * GIB
    assert not stat.is_running
    assert abs(stat.start_time_epoch_seconds - (now - 10)) < 1e-3
    assert stat.active_seconds is not None and abs(stat.active_seconds - 6.0) < 1e-3


def test_accounting_off_gives_none(tmp_path) -> None:
    node = sim_node(tmp_path, accounting_mode=False)
    gpu = backend_for(node).read_node(with_accounting=True).gpus[0]
    assert gpu.accounting_mode is False and gpu.accounting is None


def test_ecc_and_thermal_faults_show_in_readings(tmp_path) -> None:
    node = sim_node(tmp_path)
    control.inject_fault(node, 0, "ecc-uncorrectable")
    control.inject_fault(node, 1, "thermal")
    control.inject_fault(node, 2, "remap-failure")
    control.inject_fault(node, 3, "pcie-degraded")
    g = backend_for(node).read_node().gpus
    assert g[0].ecc_volatile_uncorrected == 1 and g[0].ecc_aggregate_uncorrected == 1
    assert g[1].temperature_celsius == 94 and g[1].clock_event_reasons is not None
    assert g[1].clock_event_reasons & 0x40  # HwThermalSlowdown
    assert g[2].remapped_rows_failure is True
    assert g[3].pcie_link_width is not None and g[3].pcie_link_width_max is not None
    assert g[3].pcie_link_width < g[3].pcie_link_width_max


def test_lost_gpu_minor_is_inferred_when_only_one_is_unaccounted_for(tmp_path) -> None:
    node = sim_node(tmp_path, minor_order=(2, 0, 3, 1))
    control.inject_fault(node, 3, "lost")  # NVML ordinal 2
    lost = backend_for(node).read_node().gpus[2]
    assert lost.status == "lost" and lost.minor == 3 and "inferred" in lost.detail


def test_two_lost_gpus_stay_unnamed_rather_than_guessed(tmp_path) -> None:
    node = sim_node(tmp_path)
    control.inject_fault(node, 0, "lost")
    control.inject_fault(node, 1, "lost")
    gpus = backend_for(node).read_node().gpus
    assert [g.minor for g in gpus[:2]] == [None, None]


def test_xid_events_arrive_through_the_event_set(tmp_path) -> None:
    node = sim_node(tmp_path, minor_order=(2, 0, 3, 1))
    control.inject_fault(node, 3, "xid", code=13)  # before registration: not an event
    backend = backend_for(node)
    assert backend.open_xid_events() is None
    assert backend.poll_xid_events() == []
    control.inject_fault(node, 3, "xid", code=79)  # minor 3 is NVML index 2
    control.inject_fault(node, 0, "xid", code=48)  # minor 0 is NVML index 1
    assert sorted(backend.poll_xid_events() or []) == [(1, 48), (2, 79)]
    assert backend.poll_xid_events() == []


def test_xid_events_not_supported_is_said(tmp_path) -> None:
    backend = backend_for(sim_node(tmp_path, xid_events=False))
    why = backend.open_xid_events()
    assert why is not None and "NotSupported" in why
    assert backend.poll_xid_events() is None


def _nvml_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.name.startswith("nvml-") and t.ident is not None}


def test_a_healthy_node_is_read_by_one_worker_that_is_kept(tmp_path) -> None:
    backend = backend_for(sim_node(tmp_path, gpus_per_node=8))
    before = _nvml_threads()
    backend.read_node()
    first = _nvml_threads() - before
    for _ in range(50):
        assert all(g.ok for g in backend.read_node().gpus)
    assert len(first) == 1
    assert _nvml_threads() - before == first


def test_a_hung_first_gpu_delays_only_itself(tmp_path) -> None:
    node = sim_node(tmp_path)
    control.inject_fault(node, 0, "unresponsive")  # the lead worker takes GPU 0 first and hangs there
    try:
        started = time.monotonic()
        reading = backend_for(node, timeout=1.0).read_node()
        assert time.monotonic() - started < 2.0
        assert [g.status for g in reading.gpus] == ["unresponsive", "ok", "ok", "ok"]
    finally:
        control.clear_faults(node)


def test_a_gpu_still_hung_is_reported_at_once_without_another_thread(tmp_path) -> None:
    node = sim_node(tmp_path)
    control.inject_fault(node, 2, "unresponsive")
    backend = backend_for(node, timeout=0.5)
    try:
        first = backend.read_node()
        assert first.gpus[2].status == "unresponsive"
        backend.read_node()  # the worker stuck on GPU 2 was retired: this read starts its replacement
        threads = _nvml_threads()
        for _ in range(3):
            started = time.monotonic()
            again = backend.read_node()
            assert time.monotonic() - started < 0.2  # not another wait for the time box
            assert [g.status for g in again.gpus] == ["ok", "ok", "unresponsive", "ok"]
            assert "since" in again.gpus[2].detail
            assert again.gpus[2].minor == 2  # read before the call that hung
        assert _nvml_threads() <= threads  # no new thread hangs beside the first
    finally:
        control.clear_faults(node)
    deadline = time.monotonic() + 5
    while backend.read_node().gpus[2].status != "ok":  # the hung call returns; the GPU is read again
        assert time.monotonic() < deadline, "the GPU stayed unresponsive after the fault was cleared"
        time.sleep(0.1)


def test_nvml_init_failure_is_data(tmp_path) -> None:
    node = sim_node(tmp_path)
    nv = make_module(node)

    def broken_init() -> None:
        raise nv.NVMLError(nv.NVML_ERROR_DRIVER_NOT_LOADED)

    nv.nvmlInit = broken_init
    reading = NvmlBackend(nv, timeout_seconds=1.0).read_node()
    assert reading.gpus == () and reading.error is not None and "Driver Not Loaded" in reading.error


def test_xid_events_come_with_the_reading_when_asked(tmp_path) -> None:
    node = sim_node(tmp_path, minor_order=(2, 0, 3, 1))
    backend = backend_for(node)
    assert backend.read_node(with_xid_events=True).xid_events is None  # no event set opened
    assert backend.open_xid_events() is None
    assert backend.read_node(with_xid_events=True).xid_events == ()
    control.inject_fault(node, 3, "xid", code=79)
    reading = backend.read_node(with_xid_events=True)
    assert reading.xid_events == ((2, 79),)
    assert backend.read_node().xid_events is None  # not asked: left in the set for the next poll
    assert backend.poll_xid_events() == []


def test_readings_carry_exactly_the_declared_fields(tmp_path) -> None:
    """The gateway builds readings without the dataclass constructor (slurmgpu/frozen.py): a misspelt key would
    otherwise become a stray attribute."""
    node = sim_node(tmp_path)
    now = time.time()
    control.add_load(node, (0,), 50, GIB, 7, now - 5, now + 60)
    gpu = backend_for(node).read_node(with_accounting=True, with_processes=True, samples_since_us=0).gpus[0]
    assert set(vars(gpu)) == {f.name for f in dataclasses.fields(GpuReading)}
    assert gpu.processes and gpu.accounting and gpu.utilization_samples


def test_a_library_bug_is_an_error_at_once_not_a_timeout(tmp_path) -> None:
    nv = make_module(sim_node(tmp_path))

    def broken_count() -> int:
        raise RuntimeError("bad state")

    nv.nvmlDeviceGetCount = broken_count
    started = time.monotonic()
    reading = NvmlBackend(nv, timeout_seconds=2.0).read_node()
    assert time.monotonic() - started < 1.0
    assert reading.gpus == () and reading.error == "RuntimeError: bad state"


def test_a_library_bug_on_one_gpu_costs_that_gpu_only(tmp_path) -> None:
    nv = make_module(sim_node(tmp_path))
    real_name = nv.nvmlDeviceGetName

    def name(handle: object) -> str:
        if nv.nvmlDeviceGetIndex(handle) == 1:
            raise ValueError("garbled")
        return str(real_name(handle))

    nv.nvmlDeviceGetName = name
    started = time.monotonic()
    reading = NvmlBackend(nv, timeout_seconds=2.0).read_node()
    assert time.monotonic() - started < 1.0
    assert [g.status for g in reading.gpus] == ["ok", "error", "ok", "ok"]
    assert "ValueError: garbled" in reading.gpus[1].detail and reading.gpus[1].minor == 1


def test_flag_is_a_one_shot_event() -> None:
    from slurmgpu.gpu.nvml import _Flag

    flag = _Flag()
    assert not flag.is_set() and flag.wait(0.01) is False
    threading.Timer(0.05, flag.set).start()
    assert flag.wait(5.0) is True and flag.is_set()
    flag.set()  # set twice: still set, no error
    assert flag.wait(0) is True and flag.wait(-1.0) is True and flag.is_set()
