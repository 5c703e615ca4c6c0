"""Health checks, the XID table and watermark, the drain policy and circuit breaker, DCGM results."""

from __future__ import annotations

import json
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import write_config

from slurmgpu.cli.app import cli
from slurmgpu.config import Config, HealthConfig
from slurmgpu.gpu.types import GpuProcess, GpuReading, NodeReading
from slurmgpu.health import checks
from slurmgpu.health.checks import XidEvent, epilog_checks, prolog_checks
from slurmgpu.health.policy import breaker_cap, decide, keep_after_race
from slurmgpu.health.results import CheckResult, drain_reason
from slurmgpu.health.xid_source import Watermark
from slurmgpu.health.xid_table import classify
from slurmgpu.slurm.nodes import SlurmNode
from slurmgpu.store.records import Baseline

CFG = HealthConfig()
SRC = Path(__file__).resolve().parents[2] / "src"


def gpu(minor: int = 0, **kw: object) -> GpuReading:
    base: dict[str, object] = dict(
        index=minor,
        timestamp_epoch_seconds=1000.0,
        minor=minor,
        uuid=f"GPU-{minor}",
        temperature_celsius=40,
        clock_event_reasons=1,
        ecc_volatile_uncorrected=0,
        ecc_volatile_corrected=0,
        pcie_link_gen=5,
        pcie_link_gen_max=5,
        pcie_link_width=16,
        pcie_link_width_max=16,
        persistence_mode=True,
        processes=(),
    )
    base.update(kw)
    return GpuReading(**base)  # type: ignore[arg-type]


def statuses(results: list[CheckResult]) -> dict[str, str]:
    return {r.check: r.status for r in results if r.status != "ok"}


def test_healthy_node_passes_everything() -> None:
    node = NodeReading(gpus=tuple(gpu(m) for m in range(4)))
    assert statuses(prolog_checks(node, (0, 1), CFG, expected_gpus=4)) == {}


@pytest.mark.parametrize(
    ("kw", "check", "status"),
    [
        ({"status": "lost", "detail": "NVML: GPU is lost"}, "gpu-lost", "fail"),
        ({"status": "unresponsive", "detail": "no answer"}, "gpu-unresponsive", "fail"),
        ({"status": "error", "detail": "odd"}, "gpu-read", "warn"),
        ({"ecc_volatile_uncorrected": 2}, "ecc-uncorrectable", "fail"),
        ({"ecc_volatile_corrected": 50000}, "ecc-correctable-storm", "warn"),
        ({"retired_pages_pending": True}, "retired-pages-pending", "fail"),
        ({"retired_pages_double_bit": 61}, "retired-pages", "fail"),
        ({"retired_pages_single_bit": 50}, "retired-pages", "warn"),
        ({"remapped_rows_pending": True}, "row-remap-pending", "fail"),
        ({"remapped_rows_failure": True}, "row-remap-failure", "fail"),
        ({"remapped_rows_uncorrectable": 9}, "row-remap-count", "warn"),
        ({"temperature_celsius": 88}, "temperature", "warn"),
        ({"temperature_celsius": 95}, "temperature", "fail"),
        ({"clock_event_reasons": 0x40}, "hw-thermal-slowdown", "fail"),
        ({"clock_event_reasons": 0x08}, "hw-slowdown", "warn"),
        ({"clock_event_reasons": 0x80}, "hw-power-brake", "warn"),
        ({"pcie_link_width": 8}, "pcie-link", "warn"),
        ({"persistence_mode": False}, "persistence-mode", "warn"),
        ({"processes": (GpuProcess(77, 5 << 30),)}, "leftover-processes", "fail"),
    ],
)
def test_each_check(kw: dict[str, object], check: str, status: str) -> None:
    node = NodeReading(gpus=(gpu(0, **kw), gpu(1)))
    got = statuses(prolog_checks(node, (0,), CFG))
    assert got.get(check) == status, got


def test_idle_gpu_may_downshift_its_pcie_generation() -> None:
    idle = NodeReading(gpus=(gpu(0, pcie_link_gen=1, clock_event_reasons=checks.REASON_GPU_IDLE),))
    busy = NodeReading(gpus=(gpu(0, pcie_link_gen=3, clock_event_reasons=0),))
    assert statuses(prolog_checks(idle, (), CFG)) == {}
    assert statuses(prolog_checks(busy, (), CFG)) == {"pcie-link": "warn"}


def test_leftover_processes_only_count_on_the_jobs_gpus_and_follow_the_config() -> None:
    node = NodeReading(gpus=(gpu(0), gpu(1, processes=(GpuProcess(5, None),))))
    assert statuses(prolog_checks(node, (0,), CFG)) == {}
    assert statuses(prolog_checks(node, (1,), replace(CFG, leftover_processes="warn"))) == {
        "leftover-processes": "warn"
    }
    assert statuses(prolog_checks(node, (1,), replace(CFG, leftover_processes="ignore"))) == {}


def test_gpu_count() -> None:
    node = NodeReading(gpus=(gpu(0), gpu(1)))
    assert statuses(prolog_checks(node, (), CFG, expected_gpus=4)) == {"gpu-count": "fail"}
    assert statuses(prolog_checks(node, (), CFG, expected_gpus=1)) == {"gpu-count": "warn"}
    assert statuses(prolog_checks(node, (), replace(CFG, expected_gpus=2))) == {}


def test_nvml_unusable_is_a_warning_not_a_drain() -> None:
    assert statuses(
        prolog_checks(NodeReading(gpus=(), error="NVML Shared Library Not Found"), (0,), CFG)
    ) == {"nvml": "warn"}


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (79, "drain"),
        (48, "drain"),
        (95, "drain"),
        (119, "drain"),
        (63, "warn"),
        (94, "warn"),
        (13, "app"),
        (31, "app"),
        (43, "app"),
        (45, "app"),
        (68, "app"),
        (999, "warn"),
    ],
)
def test_xid_table(code: int, action: str) -> None:
    assert classify(code).action == action


def test_xid_config_overrides_the_table() -> None:
    assert classify(13, drain=(13,)).action == "drain"
    assert classify(79, ignore=(79,)).action == "ignore"
    results = checks.check_xids(
        [XidEvent(13, 0, "0000:18:00"), XidEvent(79, 1, "0000:2a:00")], replace(CFG, xid_ignore=(79,))
    )
    assert [(r.status, r.minor) for r in results] == [("ok", 0)]


def ev(code: int, n: int) -> XidEvent:
    return XidEvent(code, 0, "0000:18:00", f"[{n:10.6f}] NVRM: Xid (PCI:0000:18:00): {code}, ...")


def test_watermark_hands_out_each_xid_once_and_notices_a_reboot(tmp_path: Path, config: Config) -> None:
    w = Watermark(config, "gn1")
    first = [ev(13, 1), ev(79, 2)]
    assert w.new(first) == first
    w.advance(first)
    assert w.new(first) == []
    later = [*first, ev(63, 3)]
    assert w.new(later) == [ev(63, 3)]
    wrapped = [ev(79, 2), ev(63, 3), ev(95, 4)]  # the ring buffer dropped the oldest line
    assert w.new(wrapped) == [ev(63, 3), ev(95, 4)]
    rebooted = [ev(48, 1), ev(63, 2)]  # same length as before, different lines: a fresh log
    assert w.new(rebooted) == rebooted
    assert w.new([ev(48, 1)]) == [ev(48, 1)]  # shorter: a fresh log
    assert oct(w.path.stat().st_mode & 0o777) == "0o600"


def test_epilog_sees_what_changed_during_the_job() -> None:
    base = {0: Baseline(0, "GPU-0", 0.0, 100.0, 0, 1, 10, None, 0, 0)}
    same = NodeReading(gpus=(gpu(0, ecc_aggregate_uncorrected=1, ecc_aggregate_corrected=10),))
    assert statuses(epilog_checks(same, base, 3600, CFG)) == {}
    grown = NodeReading(gpus=(gpu(0, ecc_aggregate_uncorrected=3, ecc_aggregate_corrected=5000),))
    got = epilog_checks(grown, base, 3600, CFG)
    assert statuses(got) == {"ecc-uncorrectable": "fail", "ecc-correctable-storm": "warn"}
    assert "2 new uncorrectable" in next(r.detail for r in got if r.check == "ecc-uncorrectable")
    gone = NodeReading(gpus=())
    assert statuses(epilog_checks(gone, base, 10, CFG)) == {"gpu-lost": "fail"}


def test_drain_reason_is_one_line_and_bounded() -> None:
    r = drain_reason(
        [
            CheckResult("xid", "fail", "XID 79:\n fallen off " + "x" * 500, 3),
            CheckResult("ecc-uncorrectable", "fail", "2", 1),
        ]
    )
    assert r.startswith("slurmgpu: xid gpu3: XID 79: fallen off") and "\n" not in r and len(r) <= 200


def snode(name: str, *, reason: str = "", when: float | None = None, state: str = "idle") -> SlurmNode:
    return SlurmNode(name, "drained" if reason else state, reason, None, "root" if reason else "", when)


FAIL = [CheckResult("gpu-lost", "fail", "NVML: GPU is lost", 0)]


def test_breaker_spares_past_the_cap() -> None:
    nodes = [snode("a", reason="slurmgpu: xid gpu0: XID 79", when=1000.0), snode("b"), snode("c")]
    d = decide(FAIL, "b", nodes, 1500.0, max_fraction=0.1, min_nodes=1, window_seconds=3600)
    assert d.action == "spare" and "circuit breaker" in d.detail and "a" in d.detail
    # outside the window the old drain no longer counts
    d = decide(FAIL, "b", nodes, 1000.0 + 7200, max_fraction=0.1, min_nodes=1, window_seconds=3600)
    assert d.action == "drain"
    # manual drains and other people's drains never count
    nodes = [
        snode("a", reason="slurmgpu: manual: fan", when=1000.0),
        snode("x", reason="maintenance", when=1000.0),
        snode("b"),
    ]
    assert (
        decide(FAIL, "b", nodes, 1500.0, max_fraction=0.1, min_nodes=1, window_seconds=3600).action == "drain"
    )
    assert decide([], "b", nodes, 1500.0, max_fraction=0.1, min_nodes=1, window_seconds=3600).action == "none"


@given(st.integers(1, 2000), st.floats(0.01, 1.0), st.integers(0, 10))
def test_breaker_cap_bounds(total: int, fraction: float, minimum: int) -> None:
    cap = breaker_cap(total, fraction, minimum)
    assert cap >= minimum and cap >= int(total * fraction) - 1


@given(st.integers(3, 40), st.integers(1, 40), st.integers(1, 5))
def test_racing_drains_settle_on_exactly_the_cap(total: int, racers: int, cap_min: int) -> None:
    racers = min(racers, total)
    names = [f"n{i:03d}" for i in range(total)]
    drained = set(names[:racers])
    nodes = [
        snode(n, reason="slurmgpu: gpu-lost gpu0: x", when=1000.0) if n in drained else snode(n)
        for n in names
    ]
    kept = [
        n
        for n in drained
        if keep_after_race(n, nodes, 1001.0, max_fraction=0.0001, min_nodes=cap_min, window_seconds=3600)
    ]
    assert len(kept) == min(racers, breaker_cap(total, 0.0001, cap_min))


def install_dcgmi(tmp: Path, scenario: dict[str, object]) -> Path:
    path = tmp / "scenario.json"
    path.write_text(json.dumps(scenario))
    wrapper = tmp / "bin" / "dcgmi"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(
        f"#!/bin/sh\nexport PYTHONPATH={SRC}\nexport SLURMGPU_FAKE_DCGMI={path}\n"
        f'exec {sys.executable} -m slurmgpu.sim.fake_dcgmi "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def health_cli(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, dcgmi: Path, *args: str
) -> tuple[int, dict[str, object]]:
    cfg = write_config(
        tmp, extra=f'[health]\ndcgmi_path = "{dcgmi}"\nexpected_gpus = 4\n', sim="minor_order = [1, 0, 3, 2]"
    )
    monkeypatch.setenv("SLURMGPU_CONFIG", str(cfg))
    result = CliRunner().invoke(cli, ["health", "--node", "gn1", "--json", *args])
    return result.exit_code, json.loads(result.output)


def test_dcgm_health_incident_fails_the_right_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dcgmi = install_dcgmi(
        tmp_path,
        {
            "gpus": [0, 1, 2, 3],
            "health": {
                "incidents": [
                    {"gpu": 2, "system": "memory", "health": "fail"},
                    {"gpu": 0, "system": "pcie", "health": "warn"},
                ]
            },
        },
    )
    code, report = health_cli(tmp_path, monkeypatch, dcgmi)
    assert code == 2
    got = {(r["check"], r["status"], r["minor"]) for r in report["results"] if r["status"] != "ok"}  # type: ignore[union-attr]
    assert ("dcgm-memory", "fail", 3) in got  # DCGM GPU id 2 is NVML index 2, device minor 3
    assert ("dcgm-pcie", "warn", 1) in got


def test_dcgm_diag_failure_and_a_broken_dcgmi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dcgmi = install_dcgmi(
        tmp_path,
        {
            "gpus": [0, 1, 2, 3],
            "diag": {
                "tests": [
                    {
                        "name": "memory",
                        "category": "Hardware",
                        "level": 1,
                        "gpus": {"1": {"status": "fail", "warnings": ["bad ECC page"]}},
                    }
                ]
            },
        },
    )
    code, report = health_cli(tmp_path, monkeypatch, dcgmi, "--diag", "1")
    assert code == 2
    assert any(
        r["check"] == "dcgm-diag-memory" and r["minor"] == 0 and "bad ECC page" in r["detail"]
        for r in report["results"]
    )  # type: ignore[union-attr]
    broken = install_dcgmi(tmp_path, {"broken": {"mode": "garbage"}})
    code, report = health_cli(tmp_path, monkeypatch, broken)
    assert code == 1  # dcgmi printing nonsense is a warning, never a drain
    assert any(r["check"] == "dcgm-health" and r["status"] == "warn" for r in report["results"])  # type: ignore[union-attr]


def test_health_exit_codes_follow_the_worst_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path)
    monkeypatch.setenv("SLURMGPU_CONFIG", str(cfg))
    runner = CliRunner()
    assert runner.invoke(cli, ["health", "--node", "gn1"]).exit_code == 0
    runner.invoke(cli, ["sim", "fault", "--node", "gn1", "--gpu", "1", "persistence-off"])
    assert runner.invoke(cli, ["health", "--node", "gn1"]).exit_code == 1
    runner.invoke(cli, ["sim", "fault", "--node", "gn1", "--gpu", "2", "thermal"])
    out = runner.invoke(cli, ["health", "--node", "gn1"])
    assert out.exit_code == 2 and "temperature" in out.output


def test_kernel_log_tail_reads_only_what_the_log_gained(tmp_path: Path) -> None:
    import os

    from slurmgpu.gpu.xid import KernelLogTail

    log = tmp_path / "kern.log"
    log.write_text("boot\n")
    tail = KernelLogTail(log)
    assert tail.read_new() == ("boot\n", False)
    assert tail.read_new() == ("", False)  # nothing new
    with log.open("a") as f:
        f.write("NVRM: Xid (PCI:0000:17:00): 79, pid=1\n")
    assert tail.read_new() == ("NVRM: Xid (PCI:0000:17:00): 79, pid=1\n", False)
    assert tail.read_new() == ("", False)
    log.write_text("new\n")  # truncated (a simulated reboot): the whole log again
    assert tail.read_new() == ("new\n", True)
    replacement = tmp_path / "kern.log.new"
    replacement.write_text("new\n")  # same size, another file
    os.replace(replacement, log)
    assert tail.read_new() == ("new\n", True)
    log.unlink()
    assert tail.read_new() == ("", True)
    assert tail.read_new() == ("", False)
