"""Every command through click's CliRunner: help text, one-line errors, exit codes, config show."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from tests.conftest import write_config

from slurmgpu.cli.app import cli
from slurmgpu.config import parse_config
from slurmgpu.errors import ConfigError
from slurmgpu.slurm.env import job_context
from slurmgpu.store.db import Store
from slurmgpu.store.records import JobGpuUsage


def all_commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        out.append(((*prefix, name), cmd))
        if isinstance(cmd, click.Group):
            out.extend(all_commands(cmd, (*prefix, name)))
    return out


def test_every_command_has_help_and_an_example() -> None:
    for path, cmd in all_commands(cli):
        assert cmd.help, path
        if not isinstance(cmd, click.Group):
            assert "Example:" in cmd.help, path


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_config(tmp_path)
    monkeypatch.setenv("SLURMGPU_CONFIG", str(path))
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("bad", ["abc", "12_x", "0", "1+2+3"])
def test_malformed_job_id_is_one_line_and_nonzero(cfg: Path, bad: str) -> None:
    code, out = run("job", bad)
    assert code != 0
    assert out.count("\n") == 1 and "bad job id" in out and "Traceback" not in out


def test_unknown_job_is_one_line_and_nonzero(cfg: Path) -> None:
    Store.open(cfg.parent / "state" / "slurmgpu.db").close()
    code, out = run("job", "424242")
    assert code == 1 and out.startswith("Error: ") and out.count("\n") == 1
    assert "424242" in out


def test_job_from_the_store_without_slurm(cfg: Path) -> None:
    store = Store.open(cfg.parent / "state" / "slurmgpu.db")
    env = {
        "SLURM_JOB_ID": "77",
        "SLURMD_NODENAME": "gn1",
        "SLURM_JOB_USER": "bob",
        "SLURM_JOB_GPUS": "0",
        "SLURM_JOB_ACCOUNT": "vision",
    }
    now = time.time()
    store.save_job(
        job_context(env, default_cluster="unit"),
        [],
        [
            JobGpuUsage(
                "gn1",
                0,
                "GPU-x",
                "NVIDIA A100-SXM4-40GB",
                40 << 30,
                now - 60,
                now,
                6000.0,
                70.0,
                90.0,
                30 << 30,
                40.0,
                "nvml-accounting",
            )
        ],
        now,
    )
    store.close()
    code, out = run("job", "77", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["user"] == "bob" and data["account"] == "vision" and data["state"] == "unknown"
    assert data["slurm_error"] and "not found" in data["slurm_error"]  # no Slurm binaries: said, not hidden
    assert data["energy_kwh"] == pytest.approx(6000 / 3.6e6)
    code, out = run("job", "77")
    assert code == 0 and "A100" in out and "70.0%" in out


def test_config_show_prints_the_effective_values(cfg: Path) -> None:
    code, out = run("config", "show")
    assert code == 0
    assert 'backend = "simulated"' in out and f'run_dir = "{cfg.parent}/run/{{node}}"' in out
    assert (
        parse_config(out.split("\n", 1)[1]).paths.run_dir == f"{cfg.parent}/run/{{node}}"
    )  # it is valid TOML


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[paths]\nstat_dir = '/x'\n", "paths.stat_dir"),
        ("[thresholds]\nidle_utilization_pct = 'low'\n", "thresholds.idle_utilization_pct"),
        ("backend = 'cuda'\n", "backend"),
        ("[paths]\nstate_dir = 'relative'\n", "paths.state_dir"),
        ("[simulator]\nminor_order = [0, 0, 1, 2]\n", "simulator.minor_order"),
        ("[thresholds]\ngpu_call_timeout_seconds = 0\n", "thresholds.gpu_call_timeout_seconds"),
        ("[agent]\ncpu = 'first'\n", "agent.cpu"),
        ("[agent]\ncpu = -1\n", "agent.cpu"),
        ("nonsense = 1\n", "nonsense"),
        ("[paths\n", "invalid TOML"),
    ],
)
def test_bad_config_names_the_key(cfg: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(text)
    cfg.write_text(text)
    code, out = run("config", "show")
    assert code == 1 and out.count("\n") == 1 and key in out


def test_missing_explicit_config_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURMGPU_CONFIG", str(tmp_path / "nope.toml"))
    code, out = run("config", "show")
    assert code == 1 and "does not exist" in out


def test_sim_commands_validate_their_input(cfg: Path) -> None:
    code, out = run(
        "sim", "load", "--util", "150", "--gpus", "0", "--node", "gn1", "--seconds", "1", "--no-wait"
    )
    assert code == 1 and "within 0..100" in out
    code, out = run("sim", "fault", "--node", "gn1", "--gpu", "9", "lost")
    assert code == 1 and "has no GPU 9" in out
    code, out = run("sim", "fault", "--node", "../etc", "--gpu", "0", "lost")
    assert code == 1 and "bad node name" in out
    code, out = run("sim", "fault", "--node", "gn1", "--gpu", "0", "retired-page-pending")
    assert code == 1 and "no page retirement" in out
    code, out = run("sim", "truth", "--node", "gn1", "--since", "yesterday")
    assert code == 1 and "--since" in out


def test_sim_load_and_truth_agree(cfg: Path) -> None:
    start = time.time()
    code, out = run(
        "sim",
        "load",
        "--util",
        "60",
        "--mem-gib",
        "8",
        "--gpus",
        "1",
        "--node",
        "gn2",
        "--seconds",
        "2",
        "--no-wait",
    )
    assert code == 0, out
    code, out = run(
        "sim", "truth", "--node", "gn2", "--since", str(start), "--until", str(start + 4), "--json"
    )
    gpus = {g["minor"]: g for g in json.loads(out)["gpus"]}
    assert gpus[1]["utilization_mean_pct"] == pytest.approx(30.0, abs=0.5)
    assert gpus[1]["memory_peak_bytes"] == 8 << 30
    assert gpus[0]["utilization_mean_pct"] == 0.0
