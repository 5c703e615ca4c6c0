"""The hooks as slurmd runs them: a separate process, the Slurm environment, a config file, exit codes.

Slurm itself is exercised in tests/cluster; here `scontrol` is a recording script so that the exact argument list
of a drain can be checked, including a reason with spaces and shell characters.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import write_config

from slurmgpu.config import SimulatorConfig
from slurmgpu.sim import control
from slurmgpu.sim.state import SimNode

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {
    "SLURM_JOB_ID": "501",
    "SLURMD_NODENAME": "gn1",
    "SLURM_JOB_USER": "alice",
    "SLURM_JOB_UID": "1001",
    "SLURM_JOB_ACCOUNT": "ml-team",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_GPUS": "0,1",
    "SLURM_CLUSTER_NAME": "c",
}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    scontrol = bindir / "scontrol"
    scontrol.write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {tmp_path}/scontrol.args\n'
    )
    scontrol.chmod(0o755)
    return write_config(tmp_path, extra="").parent / _with_bin(tmp_path, bindir)


def _with_bin(tmp: Path, bindir: Path) -> str:
    path = tmp / "slurmgpu.toml"
    path.write_text(path.read_text().replace(f"{tmp}/no-slurm-here", str(bindir)))
    return path.name


def hook(name: str, cfg: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": "/usr/bin:/bin", "SLURMGPU_CONFIG": str(cfg), **ENV, **env}
    return subprocess.run(
        [sys.executable, "-m", "slurmgpu", "hook", name],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sim(cfg: Path) -> SimNode:
    return SimNode(cfg.parent / "sim", "gn1", SimulatorConfig(state_dir=str(cfg.parent / "sim")))


def db(cfg: Path) -> sqlite3.Connection:
    return sqlite3.connect(cfg.parent / "state" / "slurmgpu.db")


def test_healthy_job_round_trip(cfg: Path) -> None:
    assert hook("prolog", cfg).returncode == 0
    owner = cfg.parent / "run" / "gn1" / "gpu"
    assert (owner / "0").read_text() == "501\n" and (owner / "1").read_text() == "501\n"
    assert oct((owner / "0").stat().st_mode & 0o777) == "0o644"
    spool = cfg.parent / "state" / "spool" / "unit.gn1.501.json"
    assert oct(spool.stat().st_mode & 0o777) == "0o600"  # baselines: root-only
    now = time.time()
    control.add_load(sim(cfg), (0,), 80, 4 << 30, 999, now, now + 0.5)
    time.sleep(0.7)
    assert hook("epilog", cfg).returncode == 0
    assert not (owner / "0").exists() and not (owner / "1").exists()
    assert not spool.exists()  # moved into the store
    rows = (
        db(cfg)
        .execute(
            "SELECT minor, energy_joules, utilization_max_pct, memory_peak_bytes, source "
            "FROM job_gpus ORDER BY minor"
        )
        .fetchall()
    )
    assert [r[0] for r in rows] == [0, 1]
    assert rows[0][2] == 80.0 and rows[0][3] == 4 << 30 and rows[0][4] == "nvml-accounting"
    assert rows[1][2] == 0.0
    assert rows[0][1] > rows[1][1] > 0  # the loaded GPU drew more energy than the idle one
    # the epilog again (Slurm may rerun it): same rows, not more
    assert hook("epilog", cfg).returncode == 0
    assert db(cfg).execute("SELECT count(*) FROM job_gpus").fetchone()[0] == 2


def test_lost_gpu_drains_with_a_precise_reason_and_fails_the_prolog(cfg: Path) -> None:
    control.inject_fault(sim(cfg), 1, "lost")
    result = hook("prolog", cfg)
    assert result.returncode == 1
    args = (cfg.parent / "scontrol.args").read_text().splitlines()
    assert args[:3] == ["update", "nodename=gn1", "state=drain"]
    assert args[3].startswith("reason=slurmgpu: gpu-lost gpu")
    drain = db(cfg).execute("SELECT node, action, source, job_id, reason FROM drains").fetchone()
    assert drain[:4] == ("gn1", "drain", "prolog", 501) and drain[4] == args[3][len("reason=") :]
    assert not (cfg.parent / "run" / "gn1" / "gpu" / "0").exists()  # no ownership for a job that will not run


def test_epilog_after_a_failed_prolog_records_nothing(cfg: Path) -> None:
    control.inject_fault(sim(cfg), 0, "lost")
    assert hook("prolog", cfg).returncode == 1
    assert hook("epilog", cfg).returncode == 0  # Slurm runs it anyway
    assert db(cfg).execute("SELECT count(*) FROM job_gpus").fetchone()[0] == 0
    assert "no prolog baseline" in (cfg.parent / "state" / "slurmgpu.log").read_text()


def test_uncorrectable_ecc_on_another_gpu_still_drains(cfg: Path) -> None:
    control.inject_fault(sim(cfg), 3, "ecc-uncorrectable")
    assert hook("prolog", cfg).returncode == 1
    assert "ecc-uncorrectable gpu3" in (cfg.parent / "scontrol.args").read_text()


def test_unresponsive_gpu_finishes_within_the_budget(cfg: Path) -> None:
    control.inject_fault(sim(cfg), 0, "unresponsive")
    started = time.monotonic()
    result = hook("prolog", cfg)
    assert time.monotonic() - started < 5.0  # the configured GPU timeout is 1 s
    assert result.returncode == 1
    assert "gpu-unresponsive" in (cfg.parent / "scontrol.args").read_text()
    control.clear_faults(sim(cfg))


def test_a_drained_node_keeps_its_reason_and_still_refuses_the_job(cfg: Path) -> None:
    sinfo = cfg.parent / "bin" / "sinfo"
    sinfo.write_text(
        "#!/bin/sh\necho 'gn1|drained|2026-11-25T10:00:00|alice|slurmgpu: manual: fan swap'\n"
        "echo 'gn2|idle|Unknown|Unknown|none'\n"
    )
    sinfo.chmod(0o755)
    control.inject_fault(sim(cfg), 0, "lost")
    assert hook("prolog", cfg).returncode == 1  # the GPU is bad: the job must not run here
    assert not (cfg.parent / "scontrol.args").exists()  # and the admin's reason was not replaced
    assert db(cfg).execute("SELECT count(*) FROM drains").fetchone()[0] == 0
    assert "already drained" in (cfg.parent / "state" / "slurmgpu.log").read_text()


def test_failed_drain_command_still_fails_the_prolog(cfg: Path) -> None:
    (cfg.parent / "bin" / "scontrol").write_text(
        "#!/bin/sh\necho 'slurm_update error: Invalid node name' >&2\nexit 1\n"
    )
    control.inject_fault(sim(cfg), 0, "lost")
    assert hook("prolog", cfg).returncode == 1
    assert "drain through scontrol failed" in (cfg.parent / "state" / "slurmgpu.log").read_text()


def test_broken_config_never_fails_the_job(cfg: Path) -> None:
    cfg.write_text("backend = 'simulated'\n[paths]\nstat_dir = '/x'\n")
    for name in ("prolog", "epilog"):
        result = hook(name, cfg)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


def test_bad_environment_never_fails_the_job(cfg: Path) -> None:
    result = hook("prolog", cfg, SLURM_JOB_GPUS="zero,one")
    assert result.returncode == 0
    assert "bad SLURM_JOB_GPUS" in (cfg.parent / "state" / "slurmgpu.log").read_text()


def test_unwritable_store_never_fails_the_job(cfg: Path) -> None:
    state = cfg.parent / "state"
    state.mkdir(exist_ok=True)
    (state / "slurmgpu.db").write_bytes(b"not a database" * 1000)
    assert hook("prolog", cfg).returncode == 0
    assert hook("epilog", cfg).returncode == 0
    assert (state / "slurmgpu.db").read_bytes() == b"not a database" * 1000


def test_job_without_gpus_touches_nothing(cfg: Path) -> None:
    assert hook("prolog", cfg, SLURM_JOB_GPUS="", CUDA_VISIBLE_DEVICES="").returncode == 0
    assert not (cfg.parent / "state" / "slurmgpu.db").exists()
    assert not (cfg.parent / "sim").exists()


def test_shims_exec_the_hook_by_absolute_path() -> None:
    root = Path(__file__).resolve().parents[2]
    for shim, name in (
        (root / "prolog" / "slurmgpu-prolog", "prolog"),
        (root / "epilog" / "slurmgpu-epilog", "epilog"),
    ):
        text = shim.read_text()
        assert os.access(shim, os.X_OK)
        assert f"exec /opt/slurmgpu/bin/slurmgpu hook {name}\n" in text
        assert "SLURMGPU_CONFIG=/etc/slurmgpu/slurmgpu.toml\n" in text


def test_dcgm_job_statistics_are_recorded_around_the_job(cfg: Path) -> None:
    scenario = cfg.parent / "dcgm.json"
    scenario.write_text(
        json.dumps(
            {
                "gpus": [0, 1, 2, 3],
                "jobs": {
                    "501": {
                        "gpus": {
                            "0": {
                                "energy_joules": 5000,
                                "power_avg_watts": 250.5,
                                "sm_utilization_avg_pct": 77,
                                "xid_errors": 0,
                            },
                            "1": {"energy_joules": 700, "power_avg_watts": 70.0, "sm_utilization_avg_pct": 0},
                        }
                    }
                },
            }
        )
    )
    wrapper = cfg.parent / "bin" / "dcgmi"
    wrapper.write_text(
        f"#!/bin/sh\nexport PYTHONPATH={SRC}\nexport SLURMGPU_FAKE_DCGMI={scenario}\n"
        f'exec {sys.executable} -m slurmgpu.sim.fake_dcgmi "$@"\n'
    )
    wrapper.chmod(0o755)
    cfg.write_text(cfg.read_text() + f'\n[health]\ndcgmi_path = "{wrapper}"\n')
    assert hook("prolog", cfg).returncode == 0
    state = json.loads((cfg.parent / "dcgm.json").read_text())
    assert state  # the scenario is intact
    assert hook("epilog", cfg).returncode == 0
    rows = db(cfg).execute("SELECT minor, stats_json FROM job_dcgm_stats ORDER BY minor").fetchall()
    stats = {minor: json.loads(text) for minor, text in rows}
    assert set(stats) == {0, 1}
    assert stats[0]["energy_joules"] == 5000 and stats[0]["power_avg_watts"] == 250.5
    assert stats[0]["sm_utilization_avg_pct"] == 77
    log = (cfg.parent / "state" / "slurmgpu.log").read_text()
    assert "DCGM" not in log  # started, stopped, read and cleaned up without a complaint


def test_a_broken_dcgmi_never_touches_the_job(cfg: Path) -> None:
    wrapper = cfg.parent / "bin" / "dcgmi"
    wrapper.write_text(
        "#!/bin/sh\necho 'Error: unable to establish a connection to the specified host' >&2\nexit 235\n"
    )
    wrapper.chmod(0o755)
    cfg.write_text(cfg.read_text() + f'\n[health]\ndcgmi_path = "{wrapper}"\n')
    assert hook("prolog", cfg).returncode == 0
    assert hook("epilog", cfg).returncode == 0
    assert db(cfg).execute("SELECT count(*) FROM job_gpus").fetchone()[0] == 2
    assert "DCGM job statistics not started" in (cfg.parent / "state" / "slurmgpu.log").read_text()
