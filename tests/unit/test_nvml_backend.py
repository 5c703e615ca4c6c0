"""The NVML gateway against the simulator: mapping by minor, per-GPU failure as data, time boxes, units."""

from __future__ import annotations

import time

from tests.conftest import backend_for, sim_node

from slurmgpu.sim import control
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
