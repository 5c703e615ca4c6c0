"""The Slurm gateway: the only code that runs Slurm commands.

Commands run by absolute path with arguments as a list (hooks run as root with no PATH), under a timeout, with a
minimal environment. Failures become SlurmError with the command's first stderr line.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slurmgpu.errors import InputError, SlurmError
from slurmgpu.slurm.nodes import SINFO_NODE_FORMAT, SlurmNode, parse_gres_gpus, parse_sinfo_nodes

if TYPE_CHECKING:
    from slurmgpu.config import Config
    from slurmgpu.slurm.accounting import AccountingJob, NodeGpus, RunningJob

# The parsable text format is stable across Slurm releases (the JSON layout is not). JobName is last because it is
# the only field a user controls and it may contain the delimiter: everything after the last fixed field is the
# name. AllocTRES costs sacct a second round trip to slurmdbd (the TRES table), so single-job lookups leave it out:
# `slurmgpu job` counts GPUs from its own rows. Reports over many jobs ask for it (ACCOUNTING_FIELDS).
JOB_FIELDS = (
    "JobID",
    "JobIDRaw",
    "User",
    "Account",
    "Partition",
    "State",
    "Submit",
    "Start",
    "End",
    "ElapsedRaw",
    "NodeList",
    "ExitCode",
    "JobName",
)
ACCOUNTING_FIELDS = (*JOB_FIELDS[:-1], "AllocTRES", "JobName")
FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)


@dataclass(frozen=True)
class SacctJob:
    job_id: str  # as Slurm shows it: 123, 123_4, 123+1
    job_id_raw: int
    user: str
    account: str
    partition: str
    state: str
    submit: str | None  # ISO 8601 local time as sacct prints it; None when unknown
    start: str | None
    end: str | None
    elapsed_seconds: int
    node_list: str
    alloc_gpus: int | None
    exit_code: str
    name: str


def _time_or_none(value: str) -> str | None:
    return None if value in ("", "Unknown", "None") else value


def parse_alloc_gpus(tres: str) -> int | None:
    """'billing=2,cpu=2,gres/gpu=2,mem=1G,node=1' -> 2; None when no GPU TRES is listed."""
    total = None
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if key == "gres/gpu" or (key.startswith("gres/gpu:") and total is None):
            if not value.isdigit():
                raise SlurmError(f"sacct AllocTRES has a bad GPU count: {item!r}")
            if key == "gres/gpu":
                return int(value)
            total = int(value)
    return total


def parse_sacct(text: str, fields: tuple[str, ...] = JOB_FIELDS) -> list[SacctJob]:
    """Parse `sacct -n -P -o <fields>` output; fields must end with JobName."""
    assert fields[-1] == "JobName"
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", len(fields) - 1)
        if len(parts) != len(fields):
            raise SlurmError(
                f"sacct printed a line with {len(parts)} fields, expected {len(fields)}: {line[:80]!r}"
            )
        row = dict(zip(fields, parts, strict=True))
        if not row["JobIDRaw"].isdigit() or not row["ElapsedRaw"].isdigit():
            raise SlurmError(f"sacct printed an unexpected job line: {line[:80]!r}")
        jobs.append(
            SacctJob(
                job_id=row["JobID"],
                job_id_raw=int(row["JobIDRaw"]),
                user=row["User"],
                account=row["Account"],
                partition=row["Partition"],
                state=row["State"],
                submit=_time_or_none(row["Submit"]),
                start=_time_or_none(row["Start"]),
                end=_time_or_none(row["End"]),
                elapsed_seconds=int(row["ElapsedRaw"]),
                node_list=row["NodeList"],
                alloc_gpus=parse_alloc_gpus(row["AllocTRES"]) if "AllocTRES" in row else None,
                exit_code=row["ExitCode"],
                name=row["JobName"],
            )
        )
    return jobs


_REASON_FORBIDDEN = set("\n\r\0")


class Slurm:
    def __init__(
        self, bin_dir: Path = Path("/usr/bin"), slurm_conf: str = "", timeout_seconds: float = 10.0
    ) -> None:
        self.bin_dir = bin_dir
        self.slurm_conf = slurm_conf or os.environ.get("SLURM_CONF", "")
        self.timeout = timeout_seconds

    @classmethod
    def for_config(cls, config: Config) -> Slurm:
        """The Slurm commands the config names: binaries, slurm.conf, timeout."""
        return cls(
            config.path("slurm_bin_dir"),
            config.paths.slurm_conf,
            config.thresholds.slurm_command_timeout_seconds,
        )

    def start(
        self, program: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> Callable[[], str]:
        """Start a command; the returned function waits for its output (callers work meanwhile)."""
        exe = self.bin_dir / program
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", **(extra_env or {})}
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        if os.environ.get("TZ"):  # Slurm and Python must agree on local time (SLURM_TIME_FORMAT, dates)
            env["TZ"] = os.environ["TZ"]
        try:
            proc = subprocess.Popen(
                [str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        except FileNotFoundError:
            raise SlurmError(f"{exe} not found (set paths.slurm_bin_dir)") from None

        def result() -> str:
            try:
                out, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise SlurmError(f"{program} did not answer within {self.timeout:g} s") from None
            if proc.returncode != 0:
                first = (err.strip().splitlines() or out.strip().splitlines() or ["no output"])[0]
                raise SlurmError(
                    f"{program} {args[0] if args else ''} failed (exit {proc.returncode}): {first}"
                )
            return out

        return result

    def run(self, program: str, args: list[str]) -> str:
        return self.start(program, args)()

    def drain(self, node: str, reason: str) -> None:
        """Drain a node; running jobs finish, no new ones start."""
        if set(reason) & _REASON_FORBIDDEN:
            raise InputError("a drain reason must be one line")
        self.run("scontrol", ["update", f"nodename={node}", "state=drain", f"reason={reason}"])

    def sacct_jobs(self, job_spec: str) -> Callable[[], list[SacctJob]]:
        """Allocation lines (-X) of a job id as typed (123, 123_4, 123+1); call the result to wait for them."""
        pending = self.start("sacct", ["-X", "-n", "-P", "-j", job_spec, "-o", ",".join(JOB_FIELDS)])
        return lambda: parse_sacct(pending())

    def resume(self, node: str) -> None:
        self.run("scontrol", ["update", f"nodename={node}", "state=resume"])

    def nodes(self) -> list[SlurmNode]:
        """Every node once (sinfo lists a node per partition), with state and drain reason."""
        return parse_sinfo_nodes(self.run("sinfo", ["-h", "-N", "-o", SINFO_NODE_FORMAT]))

    def node_gpus(self, node: str) -> int | None:
        """GPUs Slurm configured on the node (its Gres), None when it has none or Slurm does not say."""
        out = self.run("sinfo", ["-h", "-N", "-n", node, "-o", "%G"])
        return parse_gres_gpus(out.splitlines()[0]) if out.strip() else None

    # -- reports and the cluster-wide record (parsers in slurm/accounting.py) ------------------------------------

    def accounting_jobs(
        self,
        since_epoch: float,
        until_epoch: float,
        *,
        account: str | None = None,
        user: str | None = None,
        partition: str | None = None,
        cluster: str | None = None,
    ) -> list[AccountingJob]:
        """Allocations (-X) of all users that were eligible or ran within [since, until), with AllocTRES and the
        AdminComment (callers filter on state and end time); `cluster`: another cluster of the same slurmdbd."""
        from slurmgpu.slurm.accounting import DELIMITER, REPORT_FIELDS, parse_accounting

        args = ["-X", "-n", "-P", f"--delimiter={DELIMITER}", "-S", _slurm_time(since_epoch)]
        args += ["-E", _slurm_time(until_epoch), "-o", ",".join(REPORT_FIELDS)]
        args += ["-u", user] if user else ["-a"]
        if account:
            args += ["-A", account]
        if partition:
            args += ["-r", partition]
        if cluster:
            args += ["-M", cluster]
        return parse_accounting(self.start("sacct", args, {"SLURM_TIME_FORMAT": "%s"})())

    def admin_comments(self, job_ids: list[int]) -> dict[int, str]:
        """Raw job id -> its AdminComment in the accounting database ('' when empty; absent when sacct does not
        know the job, for example right after it ended while slurmdbd catches up)."""
        from slurmgpu.slurm.accounting import COMMENT_FIELDS, DELIMITER, parse_admin_comments

        if not job_ids:
            return {}
        spec = ",".join(str(int(j)) for j in job_ids)
        args = ["-X", "-n", "-P", f"--delimiter={DELIMITER}", "-j", spec, "-o", ",".join(COMMENT_FIELDS)]
        return parse_admin_comments(self.run("sacct", args))

    def set_admin_comment(self, job_id: int, value: str) -> None:
        """Replace a finished job's AdminComment in the accounting database (root; `scontrol update` refuses
        finished jobs). Only our own encoding is written: lowercase letters, digits and ':' (what 22.05's
        sacctmgr keeps intact), so the value can never carry sacctmgr syntax."""
        if not value or not set(value) <= _ADMIN_COMMENT_ALPHABET:
            raise InputError("an AdminComment written by slurmgpu must be lowercase letters, digits and ':'")
        out = self.run(
            "sacctmgr",
            ["-i", "modify", "job", "where", f"jobid={int(job_id)}", "set", f"AdminComment={value}"],
        )
        if "Modified jobs" not in out:
            first = (out.strip().splitlines() or ["no output"])[0].strip()
            raise SlurmError(f"sacctmgr did not modify job {job_id}: {first}")

    def running_jobs(self, user: str | None = None) -> list[RunningJob]:
        from slurmgpu.slurm.accounting import SQUEUE_FORMAT, parse_running

        args = ["-h", "-t", "RUNNING", "-o", SQUEUE_FORMAT] + (["-u", user] if user else [])
        return parse_running(self.start("squeue", args, {"SLURM_TIME_FORMAT": "%s"})())

    def gpu_nodes(self) -> list[NodeGpus]:
        """Every node once, with the GPUs Slurm configured there (Gres) and its state."""
        from slurmgpu.slurm.accounting import SINFO_GPU_FORMAT, parse_gpu_nodes

        return parse_gpu_nodes(self.run("sinfo", ["-h", "-N", "-o", SINFO_GPU_FORMAT]))


_ADMIN_COMMENT_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz0123456789:")


def _slurm_time(epoch: float) -> str:
    """Local time as sacct's -S/-E take it."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))
