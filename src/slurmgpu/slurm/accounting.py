"""Parsing what Slurm prints for reports (pure): many jobs from sacct, running jobs from squeue, GPUs from sinfo.

Invariants the parsers rely on, set by the commands in slurm/commands.py:
- fields are separated by DELIMITER (ASCII unit separator), which neither Slurm nor our AdminComment text prints;
- AdminComment and JobName are the last two sacct fields, the only free text: the fixed fields come first, the
  name is split off from the right (a name cannot hold the delimiter; another tool's comment might);
- times are epoch seconds (SLURM_TIME_FORMAT=%s); "Unknown"/"None" mean not yet known (a running job's End).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from slurmgpu.errors import SlurmError
from slurmgpu.slurm.commands import FINAL_STATES, parse_alloc_gpus
from slurmgpu.slurm.nodes import parse_gres_gpus

DELIMITER = "\x1f"
REPORT_FIELDS = (
    "JobIDRaw",
    "JobID",
    "User",
    "Account",
    "Partition",
    "State",
    "Submit",
    "Start",
    "End",
    "ElapsedRaw",
    "NodeList",
    "AllocTRES",
    "AdminComment",
    "JobName",
)
COMMENT_FIELDS = ("JobIDRaw", "AdminComment")  # AdminComment last: free text
SQUEUE_FORMAT = DELIMITER.join(("%A", "%i", "%u", "%a", "%P", "%N", "%S"))
SINFO_GPU_FORMAT = DELIMITER.join(("%N", "%G", "%T"))


@dataclass(frozen=True)
class AccountingJob:
    job_id_raw: int
    job_id: str  # as Slurm shows it: 123, 123_4, 123+1
    user: str
    account: str
    partition: str
    state: str  # first word: "CANCELLED by 0" -> "CANCELLED"
    submit_epoch_seconds: float | None
    start_epoch_seconds: float | None
    end_epoch_seconds: float | None
    elapsed_seconds: int
    node_list: str
    alloc_gpus: int | None
    admin_comment: str
    name: str

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class RunningJob:
    job_id_raw: int
    job_id: str
    user: str
    account: str
    partition: str
    node_list: str
    start_epoch_seconds: float | None


def parse_epoch(value: str) -> float | None:
    """Epoch seconds as printed with SLURM_TIME_FORMAT=%s (or ISO 8601 local time, Slurm's default)."""
    value = value.strip()
    if value in ("", "Unknown", "None", "N/A", "(null)"):
        return None
    if value.isdigit():
        return float(value)
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise SlurmError(f"Slurm printed an unexpected time {value!r}") from None


def _split(line: str, count: int, what: str) -> list[str]:
    parts = line.split(DELIMITER, count - 1)
    if len(parts) != count:
        raise SlurmError(f"{what} printed a line with {len(parts)} fields, expected {count}: {line[:80]!r}")
    return parts


def parse_accounting(text: str) -> list[AccountingJob]:
    """`sacct -X -n -P --delimiter=DELIMITER -o REPORT_FIELDS` (with SLURM_TIME_FORMAT=%s)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fixed = _split(line, len(REPORT_FIELDS) - 1, "sacct")
        # The last two fields are free text. Another tool's AdminComment might hold the delimiter, a job name does
        # not: split the name off from the right.
        comment, sep, name = fixed.pop().rpartition(DELIMITER)
        row = dict(zip(REPORT_FIELDS[:-2], fixed, strict=True))
        if not row["JobIDRaw"].isdigit() or not row["ElapsedRaw"].isdigit() or not sep:
            raise SlurmError(f"sacct printed an unexpected job line: {line[:80]!r}")
        jobs.append(
            AccountingJob(
                job_id_raw=int(row["JobIDRaw"]),
                job_id=row["JobID"],
                user=row["User"],
                account=row["Account"],
                partition=row["Partition"],
                state=row["State"].split(" ")[0],
                submit_epoch_seconds=parse_epoch(row["Submit"]),
                start_epoch_seconds=parse_epoch(row["Start"]),
                end_epoch_seconds=parse_epoch(row["End"]),
                elapsed_seconds=int(row["ElapsedRaw"]),
                node_list=row["NodeList"],
                alloc_gpus=parse_alloc_gpus(row["AllocTRES"]),
                admin_comment=comment,
                name=name,
            )
        )
    return jobs


def parse_admin_comments(text: str) -> dict[int, str]:
    """`sacct -X -n -P --delimiter=DELIMITER -o COMMENT_FIELDS`: raw job id -> AdminComment. With several records for
    one id (a job id reused after Slurm's state was reset) the last, newest, wins: that is the one
    `sacctmgr modify job` changes."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        raw, comment = _split(line, 2, "sacct")
        if not raw.isdigit():
            raise SlurmError(f"sacct printed an unexpected job line: {line[:80]!r}")
        out[int(raw)] = comment
    return out


def parse_running(text: str) -> list[RunningJob]:
    """`squeue -h -t RUNNING -o SQUEUE_FORMAT` (with SLURM_TIME_FORMAT=%s)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        raw, shown, user, account, partition, nodes, start = _split(line, 7, "squeue")
        if not raw.isdigit():
            raise SlurmError(f"squeue printed an unexpected job line: {line[:80]!r}")
        jobs.append(RunningJob(int(raw), shown, user, account, partition, nodes, parse_epoch(start)))
    return jobs


@dataclass(frozen=True)
class NodeGpus:
    node: str
    gpus: int
    state: str

    @property
    def in_service(self) -> bool:
        return not any(word in self.state for word in ("drain", "down", "fail", "maint", "reserved", "inval"))


def parse_gpu_nodes(text: str) -> list[NodeGpus]:
    """`sinfo -h -N -o SINFO_GPU_FORMAT`: every node once (sinfo repeats a node per partition) with its GPUs."""
    nodes: dict[str, NodeGpus] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, gres, state = _split(line, 3, "sinfo")
        nodes[name] = NodeGpus(name, parse_gres_gpus(gres) or 0, state.rstrip("*~#!%$@^-"))
    return [nodes[n] for n in sorted(nodes)]
