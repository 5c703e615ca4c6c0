"""Start and stop a complete, real Slurm cluster in a private work directory.

Everything the cluster needs lives under ``workdir``: configuration, logs, state,
spool, pid files, sockets, the munge key and the MariaDB data directory.  The
daemons (mariadbd, munged, slurmdbd, slurmctld and one slurmd per node) run in
the foreground as children of this process and are stopped by PID, so a cluster
never interferes with services already running on the machine.

Needs root (mknod, useradd, ``sbatch --uid``) and the Debian packages listed in
:data:`PACKAGES`; :func:`ensure_packages` installs them through apt when missing.
Facts behind the choices made here are in ``/work/shared/slurm-lab.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType

PACKAGES: tuple[str, ...] = (
    "slurmctld",
    "slurmd",
    "slurm-client",
    "munge",
    "slurmdbd",
    "mariadb-server",
)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BIN_DIRS: tuple[str, ...] = ("/usr/bin", "/usr/sbin", "/bin", "/sbin")

FINAL_JOB_STATES: frozenset[str] = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
    }
)

DEFAULT_NODES: tuple[str, ...] = ("gn1", "gn2", "gn3")
DEFAULT_USERS: Mapping[str, str] = MappingProxyType({"alice": "ml-team", "bob": "vision"})

# Environment variables that would change what the Slurm commands talk to.
_SLURM_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SACCT_", "SINFO_")

GPU_MAJOR = 195  # the NVIDIA character device major number


class ClusterError(RuntimeError):
    """A cluster component failed to start, or a Slurm command failed."""


def _bin(name: str) -> str:
    """Absolute path of a system binary (``/usr/bin`` or ``/usr/sbin`` first)."""
    if os.path.isabs(name):
        return name
    for directory in BIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ClusterError(f"binary {name!r} not found in {':'.join(BIN_DIRS)}")


def _missing_packages(packages: Sequence[str]) -> list[str]:
    dpkg_query = _bin("dpkg-query")
    missing = []
    for package in packages:
        proc = subprocess.run(
            [dpkg_query, "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or "install ok installed" not in proc.stdout:
            missing.append(package)
    return missing


def ensure_packages(packages: Sequence[str] = PACKAGES) -> list[str]:
    """Install the Debian packages a cluster needs when they are missing.

    Runs ``apt-get update`` then ``apt-get install -y``.  While installing, a
    temporary ``/usr/sbin/policy-rc.d`` (only if none exists) stops the packages'
    maintainer scripts from starting the system-wide services.  Returns the list
    of packages that were installed (empty when all were present).
    """
    missing = _missing_packages(packages)
    if not missing:
        return []
    if os.geteuid() != 0:
        raise ClusterError(f"packages {missing} are missing and installing them needs root")
    apt_get = _bin("apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=SYSTEM_PATH)
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created_policy = True
    try:
        for args in (
            [apt_get, "update"],
            [apt_get, "install", "-y", "--no-install-recommends", *missing],
        ):
            proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise ClusterError(
                    f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}"
                )
    finally:
        if created_policy:
            policy.unlink(missing_ok=True)
    still_missing = _missing_packages(packages)
    if still_missing:
        raise ClusterError(f"packages still missing after apt-get install: {still_missing}")
    return missing


def ensure_user(name: str) -> pwd.struct_passwd:
    """Create a local user (with home directory and own group) when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    proc = subprocess.run(
        [_bin("useradd"), "-m", "-s", "/bin/bash", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 and "already exists" not in proc.stderr:
        raise ClusterError(f"useradd {name} failed: {proc.stderr.strip()}")
    return pwd.getpwnam(name)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are currently free on all addresses."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an unreaped orphan counts as dead)."""
    try:
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Format: "pid (comm) state ..."; comm may contain spaces and parentheses.
    return stat_text[stat_text.rfind(")") + 2 : stat_text.rfind(")") + 3] != "Z"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data[-65536:].decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def parse_key_values(text: str) -> dict[str, str]:
    """Parse ``Key=Value Key2=Value with spaces`` (the ``scontrol -o`` format)."""
    result: dict[str, str] = {}
    matches = list(re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)=", text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        result[match.group(1)] = text[match.end() : end].strip()
    return result


class _Daemon:
    """One process started by the cluster, with the logs that explain its failures."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], logs: Sequence[Path]) -> None:
        self.name = name
        self.proc = proc
        self.logs = list(logs)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for log in self.logs:
            text = tail(log, lines)
            if text:
                parts.append(f"--- {log} (last {lines} lines) ---\n{text}")
        return "\n".join(parts) or "(no log output)"


class Cluster:
    """A private Slurm cluster: MariaDB, munged, slurmdbd, slurmctld and N slurmd.

    Use as ``with Cluster(...) as cluster:`` or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        workdir: Path,
        prolog: Path,
        epilog: Path,
        nodes: Sequence[str] = DEFAULT_NODES,
        gpus_per_node: int = 4,
        cluster_name: str = "testgpu",
        users: Mapping[str, str] = DEFAULT_USERS,
        *,
        slurm_conf_extra: Sequence[str] = (),
        start_timeout: float = 60.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.prolog = Path(prolog).resolve()
        self.epilog = Path(epilog).resolve()
        self.nodes: tuple[str, ...] = tuple(nodes)
        self.gpus_per_node = gpus_per_node
        self.cluster_name = cluster_name
        self.users: dict[str, str] = dict(users)
        self.slurm_conf_extra: tuple[str, ...] = tuple(slurm_conf_extra)
        self.start_timeout = start_timeout
        self.hostname = socket.gethostname().split(".")[0]

        w = self.workdir
        self.conf_dir = w / "etc"
        self.log_dir = w / "log"
        self.run_dir = w / "run"
        self.state_dir = w / "state"
        self.spool_dir = w / "spool"
        self.dev_dir = w / "dev"
        self.jobs_dir = w / "jobs"
        self.munge_dir = w / "munge"
        self.mysql_dir = w / "mysql"
        self.mysql_datadir = self.mysql_dir / "data"
        self.mysql_socket = self.mysql_dir / "mysqld.sock"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.munge_key = self.munge_dir / "munge.key"
        self.slurm_conf = self.conf_dir / "slurm.conf"
        self.slurmdbd_conf = self.conf_dir / "slurmdbd.conf"
        self.gres_conf = self.conf_dir / "gres.conf"

        self.mysql_port = 0
        self.slurmdbd_port = 0
        self.slurmctld_port = 0
        self.slurmd_ports: dict[str, int] = {}
        self._db_password = secrets.token_hex(12)
        self._daemons: list[_Daemon] = []
        self._job_files: dict[int, tuple[Path, Path]] = {}
        self.started = False
        self.start_seconds: float | None = None
        self.phase_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ env

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses that talk to this cluster (a fresh copy)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SLURM_ENV_PREFIXES)}
        path = env.get("PATH", "")
        env["PATH"] = SYSTEM_PATH + (":" + path if path else "")
        env["SLURM_CONF"] = str(self.slurm_conf)
        return env

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        """Install what is missing and bring the whole cluster up, or raise ClusterError."""
        if self.started:
            return
        if os.geteuid() != 0:
            raise ClusterError("the Slurm test cluster must be started as root")
        ensure_packages()
        for user in self.users:
            ensure_user(user)
        for script in (self.prolog, self.epilog):
            if not os.access(script, os.X_OK):
                raise ClusterError(f"{script} does not exist or is not executable")
        for parent in self.workdir.parents:
            if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
                raise ClusterError(
                    f"{parent} is not traversable by other users (jobs of {sorted(self.users)} "
                    f"must reach {self.workdir}): chmod o+x it or choose another workdir"
                )
        began = time.monotonic()
        self.started = True
        # A test run that dies without calling stop() must not leave daemons behind.
        atexit.register(self.stop)
        try:
            self._prepare_dirs()
            ports = free_ports(3 + len(self.nodes))
            self.mysql_port, self.slurmdbd_port, self.slurmctld_port = ports[:3]
            self.slurmd_ports = dict(zip(self.nodes, ports[3:], strict=True))
            self._make_gpu_devices()
            self._write_configs()
            for phase in (
                self._start_mariadb,
                self._start_munge,
                self._start_slurmdbd,
                self._setup_accounting,
                self._start_slurmctld,
                self._start_slurmds,
            ):
                phase_began = time.monotonic()
                phase()
                self.phase_seconds[phase.__name__.lstrip("_")] = time.monotonic() - phase_began
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def _prepare_dirs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        for directory in (
            self.conf_dir,
            self.log_dir,
            self.run_dir,
            self.state_dir,
            self.spool_dir,
            self.dev_dir,
            self.munge_dir,
            self.mysql_dir,
        ):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        for node in self.nodes:
            (self.spool_dir / node).mkdir(exist_ok=True)
            (self.spool_dir / node).chmod(0o755)
        # Jobs of every user write their output here.
        self.jobs_dir.mkdir(exist_ok=True)
        self.jobs_dir.chmod(0o1777)

    def _make_gpu_devices(self) -> None:
        for index in range(self.gpus_per_node):
            device = self.dev_dir / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(GPU_MAJOR, index))
            device.chmod(0o666)

    # -------------------------------------------------------------- configs

    def _write_configs(self) -> None:
        auth_info = f"AuthInfo=socket={self.munge_socket}"
        node_names = ",".join(self.nodes)
        gres = f"Gres=gpu:{self.gpus_per_node}" if self.gpus_per_node else ""
        node_lines = [
            f"NodeName={node} NodeHostname={self.hostname} NodeAddr=127.0.0.1 "
            f"Port={self.slurmd_ports[node]} CPUs=2 RealMemory=4000 {gres} State=UNKNOWN".replace("  ", " ")
            for node in self.nodes
        ]
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={self.slurmctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            auth_info,
            f"StateSaveLocation={self.state_dir}",
            f"SlurmdSpoolDir={self.spool_dir}/%n",
            f"SlurmctldPidFile={self.run_dir}/slurmctld.pid",
            f"SlurmdPidFile={self.run_dir}/slurmd.%n.pid",
            f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.log_dir}/slurmd.%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "GresTypes=gpu",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0",
            f"Prolog={self.prolog}",
            f"Epilog={self.epilog}",
            "PrologFlags=Alloc",
            "PrologEpilogTimeout=60",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={self.slurmdbd_port}",
            f"AccountingStoragePass={self.munge_socket}",
            "AccountingStorageTRES=gres/gpu",
            "AccountingStorageEnforce=associations",
            "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=30",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "FirstJobId=1000",
            "MinJobAge=10",
            "KillWait=2",
            "InactiveLimit=0",
            "Waittime=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "MailProg=/bin/true",
            *node_lines,
            f"PartitionName=gpu Nodes={node_names} Default=YES MaxTime=INFINITE State=UP",
            *self.slurm_conf_extra,
        ]
        self._write(self.slurm_conf, "\n".join(lines) + "\n", 0o644)
        self._write(
            self.gres_conf,
            (
                f"Name=gpu File={self.dev_dir}/nvidia[0-{self.gpus_per_node - 1}]\n"
                if self.gpus_per_node
                else ""
            ),
            0o644,
        )
        dbd_lines = [
            "AuthType=auth/munge",
            auth_info,
            f"DbdHost={self.hostname}",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.slurmdbd_port}",
            "SlurmUser=root",
            "DebugLevel=info",
            f"LogFile={self.log_dir}/slurmdbd.log",
            f"PidFile={self.run_dir}/slurmdbd.pid",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self.mysql_port}",
            "StorageUser=slurm",
            f"StoragePass={self._db_password}",
            "StorageLoc=slurm_acct_db",
        ]
        self._write(self.slurmdbd_conf, "\n".join(dbd_lines) + "\n", 0o600)

    @staticmethod
    def _write(path: Path, text: str, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        path.chmod(mode)

    # -------------------------------------------------------------- daemons

    def _spawn(
        self, name: str, args: list[str], logs: Sequence[Path], env: Mapping[str, str] | None = None
    ) -> _Daemon:
        out_path = self.log_dir / f"{name}.out"
        with open(out_path, "ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else self.env,
                cwd=self.workdir,
                start_new_session=True,
            )
        daemon = _Daemon(name, proc, [*logs, out_path])
        self._daemons.append(daemon)
        return daemon

    def _wait_for(
        self,
        what: str,
        check: Callable[[], bool],
        daemon: _Daemon | None,
        timeout: float | None = None,
        interval: float = 0.05,
    ) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.start_timeout)
        while True:
            if check():
                return
            if daemon is not None and daemon.proc.poll() is not None:
                raise ClusterError(
                    f"{daemon.name} exited with code {daemon.proc.returncode} while waiting "
                    f"for {what}\n{daemon.log_tail()}"
                )
            if time.monotonic() > deadline:
                detail = daemon.log_tail() if daemon is not None else ""
                raise ClusterError(f"timed out waiting for {what}\n{detail}")
            time.sleep(interval)
            interval = min(interval * 1.5, 0.2)

    def _mysql_args(self) -> list[str]:
        return ["--no-defaults", f"--socket={self.mysql_socket}", "--user=root"]

    def _start_mariadb(self) -> None:
        err_log = self.log_dir / "mariadb.err"
        if not (self.mysql_datadir / "mysql").is_dir():
            self.mysql_datadir.mkdir(exist_ok=True)
            proc = subprocess.run(
                [
                    _bin("mariadb-install-db"),
                    "--no-defaults",
                    f"--datadir={self.mysql_datadir}",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ],
                capture_output=True,
                text=True,
                env=self.env,
                check=False,
            )
            if proc.returncode != 0:
                raise ClusterError(
                    f"mariadb-install-db failed ({proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                )
        daemon = self._spawn(
            "mariadb",
            [
                _bin("mariadbd"),
                "--no-defaults",
                f"--datadir={self.mysql_datadir}",
                "--user=root",
                f"--socket={self.mysql_socket}",
                f"--port={self.mysql_port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.mysql_dir}/mariadbd.pid",
                f"--log-error={err_log}",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--innodb-lock-wait-timeout=900",
                "--max-connections=200",
            ],
            [err_log],
        )
        mysqladmin = _bin("mysqladmin")

        def ping() -> bool:
            proc = subprocess.run(
                [mysqladmin, *self._mysql_args(), "ping"],
                capture_output=True,
                check=False,
            )
            return proc.returncode == 0

        self._wait_for("MariaDB (mysqladmin ping)", ping, daemon)
        self._wait_for(f"MariaDB TCP port {self.mysql_port}", lambda: port_open(self.mysql_port), daemon)
        password = self._db_password
        sql = "\n".join(
            [
                "CREATE DATABASE IF NOT EXISTS slurm_acct_db;",
                *(
                    f"CREATE USER IF NOT EXISTS 'slurm'@'{host}' IDENTIFIED BY '{password}';\n"
                    f"ALTER USER 'slurm'@'{host}' IDENTIFIED BY '{password}';\n"
                    f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{host}';"
                    for host in ("127.0.0.1", "localhost")
                ),
                "FLUSH PRIVILEGES;",
            ]
        )
        client = _bin("mariadb") if os.path.exists("/usr/bin/mariadb") else _bin("mysql")
        proc = subprocess.run(
            [client, *self._mysql_args()],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ClusterError(f"creating the accounting database failed: {proc.stderr}")

    def _start_munge(self) -> None:
        if not self.munge_key.exists():
            self._write_key()
        log = self.log_dir / "munged.log"
        daemon = self._spawn(
            "munged",
            [
                _bin("munged"),
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={self.munge_key}",
                f"--log-file={log}",
                f"--pid-file={self.munge_dir}/munged.pid",
                f"--seed-file={self.munge_dir}/munged.seed",
                "--num-threads=4",
            ],
            [log],
        )
        munge = _bin("munge")
        unmunge = _bin("unmunge")

        def works() -> bool:
            if not self.munge_socket.exists():
                return False
            cred = subprocess.run(
                [munge, f"--socket={self.munge_socket}", "--no-input"],
                capture_output=True,
                check=False,
            )
            if cred.returncode != 0:
                return False
            check = subprocess.run(
                [unmunge, f"--socket={self.munge_socket}"],
                input=cred.stdout,
                capture_output=True,
                check=False,
            )
            return check.returncode == 0

        self._wait_for("munged (munge | unmunge)", works, daemon)

    def _write_key(self) -> None:
        fd = os.open(self.munge_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(128))

    def _start_slurmdbd(self) -> None:
        log = self.log_dir / "slurmdbd.log"
        env = self.env
        env["SLURMDBD_CONF"] = str(self.slurmdbd_conf)
        daemon = self._spawn("slurmdbd", [_bin("slurmdbd"), "-D"], [log], env=env)
        self._wait_for(
            f"slurmdbd TCP port {self.slurmdbd_port}", lambda: port_open(self.slurmdbd_port), daemon
        )

    def _daemon(self, name: str) -> _Daemon | None:
        for daemon in self._daemons:
            if daemon.name == name:
                return daemon
        return None

    def sacctmgr(self, *args: str) -> None:
        """Run ``sacctmgr -i ARGS``; an entry that already exists is not an error."""
        proc = self.run(["sacctmgr", "-i", *args])
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 and "Nothing new added" not in output and "already exists" not in output:
            dbd = self._daemon("slurmdbd")
            raise ClusterError(
                f"sacctmgr {' '.join(args)} failed ({proc.returncode}): {output.strip()}\n"
                f"{dbd.log_tail() if dbd else ''}"
            )

    def _setup_accounting(self) -> None:
        """Create cluster, accounts and user associations with one ``sacctmgr load``.

        One load takes about 1 s where separate ``sacctmgr add`` calls take about
        0.5 s each (every slurmdbd RPC costs ~40 ms here).  root keeps its default
        account ``root`` and may also charge every project account.
        """
        accounts = sorted(set(self.users.values()))
        for name in [self.cluster_name, *accounts, *self.users]:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ClusterError(f"unsupported cluster/account/user name {name!r}")
        lines = [
            f"Cluster - '{self.cluster_name}'",
            "Parent - 'root'",
            "User - 'root':DefaultAccount='root':AdminLevel='Administrator'",
            *(f"Account - '{a}':Description='{a}':Organization='{a}'" for a in accounts),
        ]
        for account in accounts:
            lines.append(f"Parent - '{account}'")
            lines += [
                f"User - '{user}':DefaultAccount='{account}'"
                for user, user_account in self.users.items()
                if user_account == account
            ]
            lines.append("User - 'root':DefaultAccount='root'")
        load_file = self.conf_dir / "accounts.cfg"
        self._write(load_file, "\n".join(lines) + "\n", 0o644)
        proc = self.run(["sacctmgr", "-i", "load", f"file={load_file}"])
        if proc.returncode == 0:
            return
        output = proc.stdout + proc.stderr
        if "already exists" not in output:
            dbd = self._daemon("slurmdbd")
            raise ClusterError(
                f"sacctmgr load failed ({proc.returncode}): {output.strip()}\n{dbd.log_tail() if dbd else ''}"
            )
        # A restart on an existing database: add whatever is missing, one by one.
        self.sacctmgr("add", "cluster", self.cluster_name)
        if accounts:
            self.sacctmgr("add", "account", ",".join(accounts), f"cluster={self.cluster_name}")
        for user, account in self.users.items():
            self.sacctmgr("add", "user", user, f"account={account}", f"cluster={self.cluster_name}")
        self.sacctmgr(
            "add", "user", "root", f"account={','.join(['root', *accounts])}",
            f"cluster={self.cluster_name}",
        )  # fmt: skip

    def _start_slurmctld(self) -> None:
        log = self.log_dir / "slurmctld.log"
        daemon = self._spawn("slurmctld", [_bin("slurmctld"), "-D", "-i"], [log])

        def up() -> bool:
            proc = self.run(["scontrol", "ping"], timeout=15)
            return proc.returncode == 0 and " is UP" in proc.stdout

        self._wait_for("slurmctld (scontrol ping UP)", up, daemon)

    def _start_slurmds(self) -> None:
        daemons = [
            self._spawn(
                f"slurmd.{node}",
                [_bin("slurmd"), "-D", "-N", node],
                [self.log_dir / f"slurmd.{node}.log"],
            )
            for node in self.nodes
        ]
        ctld = self._daemon("slurmctld")
        states: dict[str, str] = {}

        def all_idle() -> bool:
            for daemon in [*daemons, ctld]:
                if daemon is not None and daemon.proc.poll() is not None:
                    raise ClusterError(
                        f"{daemon.name} exited with code {daemon.proc.returncode} while waiting "
                        f"for the nodes to become idle\n{daemon.log_tail()}"
                    )
            proc = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15)
            if proc.returncode != 0:
                return False
            states.clear()
            for line in proc.stdout.splitlines():
                parts = line.split()
                if len(parts) == 2:
                    states[parts[0]] = parts[1]
            return all(states.get(node) == "idle" for node in self.nodes)

        try:
            self._wait_for("all nodes IDLE in sinfo", all_idle, None)
        except ClusterError as exc:
            details = "\n".join(d.log_tail(15) for d in [*daemons, ctld] if d is not None)
            raise ClusterError(f"{exc}\nnode states: {states}\n{details}") from None

    # ------------------------------------------------------------- commands

    def run(
        self,
        args: Sequence[str],
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command (``args[0]`` may be a bare name) with the cluster env."""
        if not args:
            raise ValueError("run() needs a command")
        argv = [_bin(args[0]), *args[1:]]
        run_env = self.env
        if env:
            run_env.update(env)
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=run_env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(
        self,
        script_text: str,
        *,
        user: str = "root",
        gres: str | None = "gpu:1",
        nodes: int = 1,
        nodelist: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Submit a batch job as ``user`` and return its job id.

        The script goes to ``jobs/`` under the work directory; the job's stdout and
        stderr go to ``jobs/slurm-<id>.out`` and ``.err``.  Non-root users are
        charged to their account from ``users``.  ``env`` entries are added to the
        submission environment, which sbatch exports to the job by default.
        """
        if not script_text.startswith("#!"):
            script_text = "#!/bin/bash\n" + script_text
        script = self.jobs_dir / f"script-{secrets.token_hex(6)}.sh"
        self._write(script, script_text, 0o755)
        args = [
            "sbatch",
            "--parsable",
            f"--chdir={self.jobs_dir}",
            f"--output={self.jobs_dir}/slurm-%j.out",
            f"--error={self.jobs_dir}/slurm-%j.err",
            f"--nodes={nodes}",
        ]
        submit_env: dict[str, str] = {}
        if user != "root":
            entry = ensure_user(user)
            args += [f"--uid={entry.pw_uid}", f"--gid={entry.pw_gid}"]
            submit_env.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
            if user in self.users:
                args.append(f"--account={self.users[user]}")
        if gres:
            args.append(f"--gres={gres}")
        if nodelist:
            args.append(f"--nodelist={nodelist}")
        args += [*extra_args, str(script)]
        if env:
            submit_env.update(env)
        proc = self.run(args, env=submit_env)
        if proc.returncode != 0:
            raise ClusterError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
        job_id = int(proc.stdout.strip().split(";")[0])
        self._job_files[job_id] = (
            self.jobs_dir / f"slurm-{job_id}.out",
            self.jobs_dir / f"slurm-{job_id}.err",
        )
        return job_id

    def wait_scheduler_ready(self, timeout: float = 15.0) -> None:
        """Wait until slurmctld's main scheduler has run once (``sdiag`` Total cycles > 0).

        Until its first cycle, slurmctld uses the built-in ``batch_sched_delay`` of
        3 s (SchedulerParameters are only read by the first cycle), so a job
        submitted right after :meth:`start` waits about 3 s; after that, jobs are
        scheduled within about 1 s.  Optional: call it when latency matters.
        """

        def ran() -> bool:
            proc = self.run(["sdiag"], timeout=15)
            match = re.search(r"Main schedule statistics.*?Total cycles:\s*(\d+)", proc.stdout, re.S)
            return bool(match and int(match.group(1)) > 0)

        self._wait_for("the first slurmctld scheduling cycle", ran, self._daemon("slurmctld"), timeout)

    def job_field(self, job_id: int, field: str) -> str:
        """One sacct field of the job allocation (``sacct -X -n -P -o FIELD``)."""
        proc = self.run(["sacct", "-X", "-n", "-P", "-o", field, "-j", str(job_id)])
        if proc.returncode != 0:
            raise ClusterError(f"sacct failed for job {job_id}: {proc.stderr.strip()}")
        lines = proc.stdout.splitlines()
        return lines[-1].strip() if lines else ""

    def job_state(self, job_id: int) -> str:
        """The sacct state's first word ('CANCELLED by 0' -> 'CANCELLED'); '' if unknown."""
        state = self.job_field(job_id, "State")
        return state.split()[0] if state else ""

    def _ctld_state(self, job_id: int) -> str:
        proc = self.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"])
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def show_job(self, job_id: int) -> str:
        """``scontrol show job ID`` output (or its error message)."""
        proc = self.run(["scontrol", "show", "job", str(job_id)])
        return (proc.stdout + proc.stderr).strip()

    def wait_job(self, job_id: int, timeout: float = 60, *, wait_epilog: bool = True) -> str:
        """Poll sacct until the job reaches a final state and return that state.

        With ``wait_epilog`` it also waits until slurmctld no longer shows the job as
        COMPLETING, so the Epilog has finished on all nodes.  Never releases a held
        job: see :meth:`release_and_start_now`.
        """
        deadline = time.monotonic() + timeout
        interval = 0.1
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in FINAL_JOB_STATES:
                break
            time.sleep(interval)
            interval = min(interval * 1.5, 1.0)
        else:
            raise ClusterError(
                f"job {job_id} not finished after {timeout}s (sacct state {state!r})\n{self.show_job(job_id)}"
            )
        if wait_epilog:
            while self._ctld_state(job_id) == "COMPLETING":
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"job {job_id} still COMPLETING after {timeout}s\n{self.show_job(job_id)}"
                    )
                time.sleep(0.1)
        return state

    def release_and_start_now(self, job_id: int) -> None:
        """Release a held (e.g. requeued) job and make it eligible immediately."""
        self.run(["scontrol", "release", str(job_id)], check=True)
        self.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"], check=True)

    def job_output(self, job_id: int) -> str:
        """Contents of the job's stdout file ('' if it does not exist yet)."""
        out = self._job_files.get(job_id, (self.jobs_dir / f"slurm-{job_id}.out",))[0]
        try:
            return out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def job_stderr(self, job_id: int) -> str:
        """Contents of the job's stderr file ('' if it does not exist yet)."""
        files = self._job_files.get(job_id)
        err = files[1] if files else self.jobs_dir / f"slurm-{job_id}.err"
        try:
            return err.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def node_info(self, name: str) -> dict[str, str]:
        """``scontrol show node -o NAME`` as a dict (NodeName, State, Reason, Gres, ...)."""
        proc = self.run(["scontrol", "show", "node", "-o", name])
        if proc.returncode != 0:
            raise ClusterError(f"scontrol show node {name} failed: {proc.stderr.strip()}")
        return parse_key_values(proc.stdout.strip())

    def resume(self, name: str) -> None:
        """Return a drained or down node to service."""
        self.run(["scontrol", "update", f"nodename={name}", "state=resume"], check=True)

    def log_path(self, daemon: str) -> Path:
        """Log file of a daemon: 'slurmctld', 'slurmdbd', 'slurmd.gn1', 'munged', 'mariadb'."""
        names = {"mariadb": "mariadb.err"}
        return self.log_dir / names.get(daemon, f"{daemon}.log")

    # ----------------------------------------------------------------- stop

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process this cluster started (SIGTERM, wait, SIGKILL). Idempotent."""
        if not self._daemons:
            self.started = False
            atexit.unregister(self.stop)
            return
        ctld = self._daemon("slurmctld")
        if ctld is not None and ctld.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._cancel_all_jobs()
        phases: list[list[_Daemon]] = [
            [d for d in self._daemons if d.name.startswith("slurmd.") or d.name == "slurmctld"],
            [d for d in self._daemons if d.name == "slurmdbd"],
            [d for d in self._daemons if d.name in ("mariadb", "munged")],
        ]
        phased = {id(d) for phase in phases for d in phase}
        phases.append([d for d in self._daemons if id(d) not in phased])
        for phase in phases:
            self._terminate([d.proc for d in phase], timeout)
        self._kill_job_leftovers()
        self._daemons.clear()
        self.started = False
        atexit.unregister(self.stop)

    def _cancel_all_jobs(self) -> None:
        proc = self.run(["squeue", "-h", "-o", "%i"], timeout=10)
        job_ids = sorted({line.strip() for line in proc.stdout.splitlines() if line.strip()})
        if not job_ids:
            return
        self.run(["scancel", *job_ids], timeout=10)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            proc = self.run(["squeue", "-h", "-o", "%i"], timeout=10)
            if proc.returncode != 0 or not proc.stdout.strip():
                return
            time.sleep(0.2)

    @staticmethod
    def _terminate(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()

    def _kill_job_leftovers(self) -> None:
        """Kill slurmstepd and job processes of *this* cluster that survived its slurmds.

        They are recognised by ``SLURM_CONF=<this cluster's slurm.conf>`` in their
        environment (slurmstepd inherits it from slurmd, jobs from sbatch), so
        processes of other clusters or of the machine are never touched.
        """
        marker = f"SLURM_CONF={self.slurm_conf}".encode()
        own = {os.getpid(), os.getppid()}
        victims: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in own:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if marker not in environ:
                continue
            is_job = any(item.startswith(b"SLURM_JOB_ID=") for item in environ)
            if comm == "slurmstepd" or is_job:
                victims.append(int(entry.name))
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while victims and time.monotonic() < deadline:
            time.sleep(0.1)
            victims = [pid for pid in victims if _alive(pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Stop the cluster and delete its work directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
