"""A real local Slurm with simulated GPUs, running our shipped prolog/epilog shims: used by the cluster tests
(tests/cluster/conftest.py) and by the demo (scripts/demo.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import Cluster

REPO = Path(__file__).resolve().parents[2]
SHIPPED_BIN = "/opt/slurmgpu/bin/slurmgpu"
SHIPPED_CONFIG = "/etc/slurmgpu/slurmgpu.toml"
MINOR_ORDER = [
    1,
    0,
    3,
    2,
]  # NVML ordinal i is /dev/nvidia<MINOR_ORDER[i]>: mapping by position would be wrong


def slurmgpu_bin() -> Path:
    """The slurmgpu of the interpreter running the tests; job users must be able to run it."""
    exe = Path(sys.executable).parent / "slurmgpu"
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing: install slurmgpu into the interpreter that runs pytest")
    probe = subprocess.run(
        ["/usr/sbin/runuser", "-u", "nobody", "--", str(exe), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise RuntimeError(
            f"job users cannot run {exe} ({probe.stderr.strip()[:200]}): install slurmgpu where "
            "every user can read it (scripts/test.sh uses /opt/slurmgpu)"
        )
    return exe


def install_shim(shipped: Path, dest: Path, exe: Path, config: Path) -> Path:
    """The shipped shim with its two documented paths pointed at this test cluster (as an admin would edit it)."""
    text = shipped.read_text()
    assert SHIPPED_BIN in text and SHIPPED_CONFIG in text, f"{shipped} no longer holds the documented paths"
    dest.write_text(text.replace(SHIPPED_BIN, str(exe)).replace(SHIPPED_CONFIG, str(config)))
    dest.chmod(0o755)
    return dest


class SlurmGpuCluster:
    """The running cluster plus what our tests need: the slurmgpu CLI with the cluster's config."""

    def __init__(self, cluster: Cluster, root: Path, exe: Path, config: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.exe = exe
        self.config = config

    @property
    def env(self) -> dict[str, str]:
        return {**self.cluster.env, "SLURMGPU_CONFIG": str(self.config)}

    def slurmgpu(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.exe), *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"slurmgpu {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def job_json(self, job_id: int) -> dict[str, Any]:
        return json.loads(self.slurmgpu("job", str(job_id), "--json").stdout)  # type: ignore[no-any-return]

    def truth(self, node: str, minor: int, since: float, until: float) -> dict[str, Any]:
        out = self.slurmgpu(
            "sim",
            "truth",
            "--node",
            node,
            "--gpu",
            str(minor),
            "--since",
            repr(since),
            "--until",
            repr(until),
            "--json",
        ).stdout
        return json.loads(out)["gpus"][0]  # type: ignore[no-any-return]

    def submit(self, script: str, **kw: Any) -> int:
        body = "#!/bin/bash\nset -euo pipefail\n" + script.replace("slurmgpu ", f"{self.exe} ")
        return self.cluster.sbatch(body, env={"SLURMGPU_CONFIG": str(self.config)}, **kw)

    def run_job(self, script: str, timeout: float = 90, **kw: Any) -> int:
        job_id = self.submit(script, **kw)
        state = self.cluster.wait_job(job_id, timeout=timeout)
        assert state == "COMPLETED", (
            f"job {job_id} ended {state}\nstdout: {self.cluster.job_output(job_id)}\n"
            f"stderr: {self.cluster.job_stderr(job_id)}\nhook log: {self.hook_log()[-2000:]}"
        )
        return job_id

    def prefer(self, node: str) -> None:
        """Make `node` the scheduler's first choice (lowest weight), so the next job really lands there."""
        for name in self.cluster.nodes:
            self.cluster.run(
                ["scontrol", "update", f"nodename={name}", f"weight={1 if name == node else 100}"], check=True
            )

    def reset_nodes(self) -> None:
        """Clear simulated faults, resume every node, equal weights: the state every test starts from."""
        for name in self.cluster.nodes:
            self.slurmgpu("sim", "clear", "--node", name)
            info = self.cluster.node_info(name)
            if "DRAIN" in info.get("State", "") or "DOWN" in info.get("State", ""):
                self.cluster.resume(name)
            self.cluster.run(["scontrol", "update", f"nodename={name}", "weight=1"], check=True)

    def wait_drained(self, node: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while "DRAIN" not in self.cluster.node_info(node).get("State", ""):
            assert time.monotonic() < deadline, f"{node} never drained: {self.cluster.node_info(node)}"
            time.sleep(0.2)
        return self.reason(node)

    def reason(self, node: str) -> str:
        """The drain reason without scontrol's ' [user@time]' suffix."""
        return re.sub(r" \[[^\]]*@[^\]]*\]$", "", self.cluster.node_info(node).get("Reason", ""))

    def finish_requeued(self, job_id: int, timeout: float = 90) -> str:
        """After a failed prolog Slurm requeues the job, held or with a begin time two minutes out. Make it eligible
        now (again whenever the requeue lands after an earlier try) and wait for its final state."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.cluster.show_job(job_id).lower()
            if "held" in shown:
                self.cluster.run(["scontrol", "release", str(job_id)])
            if "reason=begintime" in shown or "held" in shown:
                self.cluster.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"])
            if "jobstate=completed" in shown or "jobstate=failed" in shown or "jobstate=cancelled" in shown:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.3)
        return self.cluster.wait_job(job_id, timeout=max(5.0, deadline - time.monotonic()))

    def drained_nodes(self) -> dict[str, str]:
        out = {}
        for name in self.cluster.nodes:
            info = self.cluster.node_info(name)
            if "DRAIN" in info.get("State", ""):
                out[name] = self.reason(name)
        return out

    def hook_log(self) -> str:
        path = self.root / "slurmgpu" / "state" / "slurmgpu.log"
        return path.read_text() if path.exists() else ""

    # -- reports and the AdminComment record (issue 5) -------------------------------------------------------------

    def admin_comment(self, job_id: int) -> str:
        """The job's AdminComment as the accounting database holds it."""
        return self.cluster.job_field(job_id, "AdminComment")

    def wait_mirrored(self, job_id: int, nodes: int = 1, timeout: float = 90) -> Any:
        """The job's record in AdminComment once it holds `nodes` nodes' parts (the epilogs' helpers are detached)."""
        from slurmgpu.store.mirror_codec import decode, is_ours

        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.admin_comment(job_id)
            if is_ours(text) and len(decode(text).nodes) >= nodes:
                return decode(text)
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id}: AdminComment {text[:60]!r} after {timeout} s\n{self.hook_log()[-3000:]}"
        )

    def config_variant(self, name: str, *, database: Path | None = None, extra: str = "") -> Path:
        """A copy of the cluster's config (readable by every user) with another store and/or extra sections."""
        text = self.config.read_text()
        if database is not None:
            text = re.sub(r'(?m)^database = ".*"$', f'database = "{database}"', text)
        path = self.root / f"slurmgpu-{name}.toml"
        path.write_text(text + extra)
        path.chmod(0o644)
        return path

    def slurmgpu_with(
        self, config: Path, *args: str, user: str = "root", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`slurmgpu ARGS` with another config, as root or (runuser) as another user."""
        env = {**self.env, "SLURMGPU_CONFIG": str(config)}
        cmd = [str(self.exe), *args]
        if user != "root":
            cmd = ["/usr/sbin/runuser", "-u", user, "--", "/usr/bin/env", f"SLURMGPU_CONFIG={config}",
                   f"SLURM_CONF={self.cluster.slurm_conf}", "PATH=/usr/bin:/bin", *cmd]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False, cwd="/")
        if check and proc.returncode != 0:
            raise AssertionError(
                f"slurmgpu {' '.join(args)} as {user} failed ({proc.returncode}): {proc.stderr}"
            )
        return proc


def write_cluster_config(root: Path, slurm_conf: Path) -> Path:
    base = root / "slurmgpu"
    path = root / "slurmgpu.toml"
    path.write_text(f"""backend = "simulated"
cluster = "testgpu"

[paths]
state_dir = "{base}/state"
run_dir = "{base}/run/{{node}}"
database = "{base}/state/slurmgpu.db"
log_file = "{base}/state/slurmgpu.log"
slurm_bin_dir = "/usr/bin"
slurm_conf = "{slurm_conf}"

[thresholds]
gpu_call_timeout_seconds = 3.0

[simulator]
state_dir = "{base}/sim"
gpus_per_node = 4
model = "H100-SXM5-80GB"
minor_order = {json.dumps(MINOR_ORDER)}

[simulator.node_models]
gn3 = "V100-SXM2-32GB"
""")
    path.chmod(0o644)
    return path


def start_cluster(prefix: str = "slurmgpu-e2e-") -> SlurmGpuCluster:
    """Start MariaDB, munge, slurmdbd, slurmctld and slurmd gn1..gn3 in a fresh directory under /tmp."""
    exe = slurmgpu_bin()
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)  # jobs run as alice and bob and read the config and the simulator state here
    slurm_conf = root / "cluster" / "etc" / "slurm.conf"
    config = write_cluster_config(root, slurm_conf)
    prolog = install_shim(REPO / "prolog" / "slurmgpu-prolog", root / "prolog", exe, config)
    epilog = install_shim(REPO / "epilog" / "slurmgpu-epilog", root / "epilog", exe, config)
    cluster = Cluster(root / "cluster", prolog, epilog)
    cluster.start()
    assert cluster.slurm_conf == slurm_conf, "the harness moved slurm.conf; update write_cluster_config"
    cluster.wait_scheduler_ready()
    return SlurmGpuCluster(cluster, root, exe, config)
