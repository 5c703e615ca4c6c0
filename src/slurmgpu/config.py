"""The TOML config file: where things live, which GPU backend runs, and the thresholds.

Every key has a default, so a node without a config file works. Paths may contain `{node}`, expanded with the
Slurm node name: several slurmd can share one host (the test cluster does), and per-GPU files must not collide.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from slurmgpu.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/slurmgpu/slurmgpu.toml")
BACKENDS = ("nvml", "simulated")


@dataclass(frozen=True)
class PathsConfig:
    state_dir: str = "/var/lib/slurmgpu"
    run_dir: str = "/run/slurmgpu"
    database: str = "/var/lib/slurmgpu/slurmgpu.db"
    log_file: str = "/var/lib/slurmgpu/slurmgpu.log"
    slurm_bin_dir: str = "/usr/bin"
    slurm_conf: str = ""  # empty: Slurm's own default (/etc/slurm/slurm.conf)


@dataclass(frozen=True)
class ThresholdsConfig:
    gpu_call_timeout_seconds: float = 5.0
    slurm_command_timeout_seconds: float = 10.0
    idle_utilization_pct: float = 5.0
    low_efficiency_pct: float = 50.0
    low_memory_fraction: float = 0.25


@dataclass(frozen=True)
class HealthConfig:
    """Health checks and the drain policy. See docs/admin-guide.md for the XID table's source."""

    expected_gpus: int = (
        0  # GPUs every node must show; 0: the prolog skips the count, `slurmgpu health` asks Slurm
    )
    temperature_warn_celsius: float = 85.0
    temperature_fail_celsius: float = 93.0
    ecc_correctable_warn: int = 10000  # volatile corrected ECC errors since boot
    ecc_correctable_rate_warn_per_hour: float = 1000.0  # during a job (epilog)
    retired_pages_warn: int = 48
    retired_pages_fail: int = 60  # NVIDIA's RMA guidance for page retirement
    remapped_rows_uncorrectable_warn: int = 8
    leftover_processes: str = "fail"  # fail | warn | ignore: compute processes on a job's GPUs at job start
    persistence_mode: str = "warn"  # warn | ignore
    dcgm_in_prolog: bool = False  # `dcgmi health -c` in the prolog (needs DCGM health watches)
    dcgmi_path: str = "/usr/bin/dcgmi"
    xid_drain: tuple[int, ...] = ()  # codes added to the shipped drain class
    xid_warn: tuple[int, ...] = ()
    xid_ignore: tuple[int, ...] = ()
    # Circuit breaker: at most this fraction of the cluster's nodes (and at least min) drained automatically
    # within the window; past it, the prolog spares the node and raises a critical event instead.
    breaker_max_fraction: float = 0.10
    breaker_min_nodes: int = 1
    breaker_window_seconds: float = 3600.0


@dataclass(frozen=True)
class AgentConfig:
    """The node agent (`slurmgpu agent`)."""

    interval_seconds: float = 10.0
    checkpoint_every: int = 1  # rounds between checkpoints to the store (what a crash can lose, energy aside)
    listen: str = "127.0.0.1:9810"  # Prometheus /metrics; loopback unless the site opens it on purpose
    dcgm_job_stats: bool = (
        True  # DCGM job statistics from the hooks, when dcgmi is installed ([health] dcgmi_path)
    )
    dcgm_stats_keep_age_seconds: float = (
        14 * 86400.0
    )  # must outlast the longest job (DCGM's default is 1 hour)
    # the one CPU the agent runs on: "auto" (the highest-numbered it may use), a CPU number, or "off" (agent/affinity.py)
    cpu: str = "auto"


@dataclass(frozen=True)
class ReportsConfig:
    """Reports and chargeback (the rate card), who sees every user's jobs, and the cluster-wide record: each job's
    GPU summary mirrored into Slurm's AdminComment by the epilog."""

    admin_groups: tuple[str, ...] = ()  # besides root, members of these Unix groups see every user's jobs
    currency: str = ""
    gpu_hour_rate: float = 0.0  # price of a GPU-hour where neither a GPU model nor a partition rate applies
    partition_rates: tuple[tuple[str, float], ...] = ()  # [reports.partition_rates] gpu = 2.5
    # [reports.gpu_model_rates] "H100" = 4.0: a part of the GPU name (case-insensitive, longest wins); wins over
    # the partition's rate
    gpu_model_rates: tuple[tuple[str, float], ...] = ()
    energy_price_per_kwh: float = 0.0  # added to the cost: GPU energy x price
    capacity_threshold_pct: float = 80.0  # `slurmgpu capacity`: the allocation level to stay under
    mirror: str = "background"  # background | inline | off
    mirror_calls_per_minute: float = 60.0  # slurmdbd calls (sacct, sacctmgr) per node: a token bucket
    mirror_burst: int = 10
    mirror_max_attempts: int = 5  # writes of one job's part before it is left for the next epilog on the node
    mirror_max_chars: int = 4000  # larger records are summarised per node, then collapsed
    mirror_jitter_seconds: float = 1.0  # random delay before the first call: spreads jobs that end together
    mirror_settle_seconds: float = (
        1.0  # wait between writing and reading back (concurrent epilogs of one job)
    )


@dataclass(frozen=True)
class SimulatorConfig:
    state_dir: str = "/var/lib/slurmgpu/sim"
    gpus_per_node: int = 4
    model: str = "H100-SXM5-80GB"
    # NVML ordinal i has device minor number minor_order[i]; empty means identity. Real servers often enumerate
    # PCI order differently from /dev/nvidiaN numbering, which is why we map by minor number.
    minor_order: tuple[int, ...] = ()
    accounting_mode: bool = True
    xid_events: bool = True  # the driver offers XID event sets (nvmlDeviceRegisterEvents); off: NotSupported
    node_models: tuple[tuple[str, str], ...] = ()

    def model_for(self, node: str) -> str:
        return dict(self.node_models).get(node, self.model)


@dataclass(frozen=True)
class Config:
    backend: str = "nvml"
    cluster: str = ""  # empty: taken from SLURM_CLUSTER_NAME, then "default"
    paths: PathsConfig = PathsConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    health: HealthConfig = HealthConfig()
    agent: AgentConfig = AgentConfig()
    reports: ReportsConfig = ReportsConfig()
    source: str = "(defaults)"

    def path(self, key: str, node: str = "") -> Path:
        """A configured path with `{node}` expanded (the node name, or `local` when there is none)."""
        value: str = getattr(self.paths, key)
        return Path(value.replace("{node}", node or "local"))

    def sim_state_dir(self) -> Path:
        return Path(self.simulator.state_dir)


def safe_filename(text: str) -> str:
    """A node or cluster name made safe as one path component (letters, digits, '-', '_', '.')."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def config_path(env: Mapping[str, str] | None = None) -> Path:
    source = os.environ if env is None else env
    return Path(source.get("SLURMGPU_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file; a missing default file means defaults, a missing explicit file is an error."""
    explicit = path is not None or bool((os.environ if env is None else env).get("SLURMGPU_CONFIG"))
    path = path or config_path(env)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    return parse_config(raw.decode("utf-8", errors="replace"), source=str(path))


def parse_config(text: str, *, source: str = "<string>") -> Config:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {source}: invalid TOML: {exc}") from None
    sections = {
        "paths": PathsConfig,
        "thresholds": ThresholdsConfig,
        "simulator": SimulatorConfig,
        "health": HealthConfig,
        "agent": AgentConfig,
        "reports": ReportsConfig,
    }
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"config file {source}: [{key}] must be a table")
            top[key] = _section(sections[key], key, value, source)
        elif key in ("backend", "cluster"):
            top[key] = _typed(key, value, str, source)
        else:
            raise ConfigError(f"config file {source}: unknown key '{key}'")
    if top.get("backend", "nvml") not in BACKENDS:
        raise ConfigError(
            f"config file {source}: backend must be one of {', '.join(BACKENDS)} (got {top['backend']!r})"
        )
    return Config(source=source, **top)


def _section(cls: type, name: str, table: dict[str, Any], source: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{name}.{key}"
        if key not in known:
            raise ConfigError(f"config file {source}: unknown key '{dotted}'")
        default = known[key].default
        if key in ("xid_drain", "xid_warn", "xid_ignore"):
            items = _typed(dotted, value, list, source)
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 1000 for i in items):
                raise ConfigError(f"config file {source}: {dotted} must be a list of XID codes (1..999)")
            values[key] = tuple(items)
        elif key == "minor_order":
            items = _typed(dotted, value, list, source)
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
                raise ConfigError(f"config file {source}: {dotted} must be a list of non-negative integers")
            if len(set(items)) != len(items):
                raise ConfigError(f"config file {source}: {dotted} has duplicate minor numbers")
            values[key] = tuple(items)
        elif key == "admin_groups":
            items = _typed(dotted, value, list, source)
            if not all(isinstance(i, str) and i for i in items):
                raise ConfigError(f"config file {source}: {dotted} must be a list of group names")
            values[key] = tuple(items)
        elif key in ("partition_rates", "gpu_model_rates"):
            table_value = _typed(dotted, value, dict, source)
            for k, v in table_value.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                    raise ConfigError(f"config file {source}: {dotted}.{k} must be a price (a number >= 0)")
            values[key] = tuple(sorted((k, float(v)) for k, v in table_value.items()))
        elif key == "cpu":
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                values[key] = str(value)
            elif value in ("auto", "off"):
                values[key] = value
            else:
                raise ConfigError(
                    f'config file {source}: {dotted} must be "auto", "off" or a CPU number (got {value!r})'
                )
        elif key == "node_models":
            table_value = _typed(dotted, value, dict, source)
            if not all(isinstance(v, str) for v in table_value.values()):
                raise ConfigError(f"config file {source}: {dotted} must map node names to model names")
            values[key] = tuple(sorted(table_value.items()))
        else:
            values[key] = _typed(dotted, value, type(default), source)
    config = cls(**values)
    _check_ranges(config, name, source)
    return config


def _typed(dotted: str, value: Any, expected: type, source: str) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"config file {source}: {dotted} must be {expected.__name__}, not a boolean")
    if not isinstance(value, expected):
        raise ConfigError(f"config file {source}: {dotted} must be {_type_name(expected)} (got {value!r})")
    return value


def _type_name(expected: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(expected, expected.__name__)


def _check_ranges(config: Any, name: str, source: str) -> None:
    if isinstance(config, ThresholdsConfig):
        for key in ("gpu_call_timeout_seconds", "slurm_command_timeout_seconds"):
            if getattr(config, key) <= 0:
                raise ConfigError(f"config file {source}: {name}.{key} must be positive")
        if not 0 <= config.idle_utilization_pct <= 100:
            raise ConfigError(f"config file {source}: {name}.idle_utilization_pct must be within 0..100")
    if isinstance(config, HealthConfig):
        if config.leftover_processes not in ("fail", "warn", "ignore"):
            raise ConfigError(f"config file {source}: {name}.leftover_processes must be fail, warn or ignore")
        if config.persistence_mode not in ("warn", "ignore"):
            raise ConfigError(f"config file {source}: {name}.persistence_mode must be warn or ignore")
        if not 0 < config.breaker_max_fraction <= 1:
            raise ConfigError(f"config file {source}: {name}.breaker_max_fraction must be within (0, 1]")
        if config.breaker_min_nodes < 0 or config.breaker_window_seconds <= 0:
            raise ConfigError(
                f"config file {source}: {name}.breaker_min_nodes/breaker_window_seconds out of range"
            )
        if not config.dcgmi_path.startswith("/"):
            raise ConfigError(f"config file {source}: {name}.dcgmi_path must be an absolute path")
        if config.temperature_warn_celsius > config.temperature_fail_celsius:
            raise ConfigError(
                f"config file {source}: {name}.temperature_warn_celsius exceeds the fail threshold"
            )
    if isinstance(config, AgentConfig):
        if not 0.1 <= config.interval_seconds <= 3600 or config.checkpoint_every < 1:
            raise ConfigError(f"config file {source}: {name}.interval_seconds/checkpoint_every out of range")
        host, _, port = config.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(
                f"config file {source}: {name}.listen must be HOST:PORT (got {config.listen!r})"
            )
    if isinstance(config, ReportsConfig):
        for key in (
            "gpu_hour_rate",
            "energy_price_per_kwh",
            "mirror_jitter_seconds",
            "mirror_settle_seconds",
        ):
            if not 0 <= getattr(config, key) <= 1e9:
                raise ConfigError(f"config file {source}: {name}.{key} must be a number >= 0")
        if not 0 < config.capacity_threshold_pct <= 100:
            raise ConfigError(f"config file {source}: {name}.capacity_threshold_pct must be within (0, 100]")
        if config.mirror not in ("background", "inline", "off"):
            raise ConfigError(f"config file {source}: {name}.mirror must be background, inline or off")
        if config.mirror_calls_per_minute <= 0 or config.mirror_burst < 1:
            raise ConfigError(
                f"config file {source}: {name}.mirror_calls_per_minute/mirror_burst must be positive"
            )
        if not 1 <= config.mirror_max_attempts <= 50 or not 200 <= config.mirror_max_chars <= 60000:
            raise ConfigError(
                f"config file {source}: {name}.mirror_max_attempts (1..50) or mirror_max_chars (200..60000) "
                "out of range"
            )
    if isinstance(config, SimulatorConfig):
        if not 1 <= config.gpus_per_node <= 64:
            raise ConfigError(f"config file {source}: {name}.gpus_per_node must be within 1..64")
        if config.minor_order and len(config.minor_order) != config.gpus_per_node:
            raise ConfigError(
                f"config file {source}: {name}.minor_order must list {config.gpus_per_node} minors"
            )
    if isinstance(config, PathsConfig):
        for f in fields(config):
            value = getattr(config, f.name)
            if value and not value.startswith("/"):
                raise ConfigError(f"config file {source}: {name}.{f.name} must be an absolute path")


def render_config(config: Config) -> str:
    """The effective config as TOML (what `slurmgpu config show` prints)."""
    lines = [
        f"# effective configuration (source: {config.source})",
        f'backend = "{config.backend}"',
        f'cluster = "{config.cluster}"',
    ]
    for section in ("paths", "thresholds", "health", "agent", "reports", "simulator"):
        lines.append(f"\n[{section}]")
        obj = getattr(config, section)
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name in ("node_models", "partition_rates", "gpu_model_rates"):
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        for table in ("partition_rates", "gpu_model_rates") if section == "reports" else ():
            if getattr(config.reports, table):
                lines.append(f"\n[reports.{table}]")
                lines.extend(
                    f"{_toml_value(k)} = {_toml_value(v)}" for k, v in getattr(config.reports, table)
                )
        if section == "simulator" and config.simulator.node_models:
            lines.append("\n[simulator.node_models]")
            lines.extend(f'{node} = "{model}"' for node, model in config.simulator.node_models)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
