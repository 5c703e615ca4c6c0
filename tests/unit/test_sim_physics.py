"""Simulator physics: the counter is an exact, monotonic integral; truth agrees with what NVML reports."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import backend_for, sim_node

from slurmgpu.sim import control, physics
from slurmgpu.sim.models import MODELS

H100 = MODELS["H100-SXM5-80GB"]

segment = st.builds(
    lambda start, length, util, mem, pid: physics.Segment(start, start + length, util, mem, pid),
    st.floats(0, 1000),
    st.floats(0.001, 500),
    st.floats(0, 100),
    st.integers(0, 1 << 36),
    st.integers(1, 10**6),
)


@given(st.lists(segment, max_size=12), st.floats(0, 1500), st.floats(0, 1500), st.floats(0, 1500))
def test_energy_is_additive_and_monotonic(segments, a, b, c) -> None:
    a, b, c = sorted((a, b, c))
    ab = physics.energy_joules(H100, segments, a, b)
    bc = physics.energy_joules(H100, segments, b, c)
    ac = physics.energy_joules(H100, segments, a, c)
    assert ab >= 0 and bc >= 0
    assert abs(ab + bc - ac) <= 1e-6 * max(1.0, ac)
    assert ab >= H100.idle_power_watts * (b - a) * (1 - 1e-9)


@given(st.lists(segment, max_size=12), st.floats(0, 1500), st.floats(0.01, 500))
def test_mean_utilization_is_within_bounds(segments, a, length) -> None:
    t = physics.interval_truth(H100, segments, a, a + length, H100.memory_total_bytes)
    assert 0 <= t["utilization_mean_pct"] <= t["utilization_max_pct"] + 1e-9 <= 100 + 1e-9
    assert t["memory_peak_bytes"] <= H100.memory_total_bytes


def test_counter_delta_equals_truth(tmp_path) -> None:
    node = sim_node(tmp_path)
    start = time.time()
    control.add_load(node, (0,), 80, 1 << 30, 7, start, start + 0.3)
    backend = backend_for(node)
    first = backend.read_node().gpus[0]
    time.sleep(0.5)
    last = backend.read_node().gpus[0]
    truth = control.truth(node, first.timestamp_epoch_seconds, last.timestamp_epoch_seconds, 0)["gpus"][0]
    assert last.energy_joules is not None and first.energy_joules is not None
    # NVML reports whole millijoules; the readings' timestamps bracket the counter reads by microseconds
    assert (
        abs((last.energy_joules - first.energy_joules) - truth["energy_joules"])
        < 0.05 * truth["energy_joules"]
    )
    assert last.energy_joules >= first.energy_joules


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0.01, 5)), min_size=1, max_size=5))
def test_counter_never_decreases_across_changing_load(tmp_path_factory, loads) -> None:
    node = sim_node(tmp_path_factory.mktemp("sim"))
    t = time.time() - 30
    for util, length in loads:
        control.add_load(node, (0,), util, 0, 1, t, t + length)
        t += length
    gpu = node.state()["gpus"][0]
    values = [node.energy_counter_joules(gpu, time.time() - 30 + dt) for dt in range(0, 31, 3)]
    assert values == sorted(values)


def test_open_ended_load_can_only_change_the_future(tmp_path) -> None:
    node = sim_node(tmp_path)
    start = time.time() - 5
    control.add_load(node, (0,), 50, 0, 9, start, start + 100)
    before = control.truth(node, start, start + 4, 0)["gpus"][0]["energy_joules"]
    control.set_load_end(node, (0,), 9, start, start + 1)  # asks to end in the past: clamps to now
    after = control.truth(node, start, start + 4, 0)["gpus"][0]["energy_joules"]
    assert before == after


def test_xid_fault_writes_a_driver_style_kernel_log_line(tmp_path) -> None:
    node = sim_node(tmp_path)
    control.inject_fault(node, 0, "xid", code=79)
    text = node.kmsg_path.read_text()
    assert "NVRM: Xid (PCI:0000:18:00): 79," in text
