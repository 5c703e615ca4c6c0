"""The node spool: the prolog's per-job baselines, handed to the epilog in a small JSON file.

The prolog runs before every job, so it writes one file instead of opening the SQLite store (sqlite3, WAL and a
transaction cost more than the rest of the prolog). The epilog moves the baselines into the store's `baselines`
table in the same transaction as the job's usage rows and then removes the file, so a re-run epilog finds them in
the store. Files are root-only (0600) in a 0700 directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from slurmgpu.config import safe_filename
from slurmgpu.store.records import Baseline

SPOOL_VERSION = 1


def spool_path(state_dir: Path, cluster: str, node: str, job_id: int) -> Path:
    safe = safe_filename(f"{cluster}.{node}")
    return state_dir / "spool" / f"{safe}.{job_id}.json"


def write_baselines(path: Path, baselines: list[Baseline], meta: dict[str, object] | None = None) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {"version": SPOOL_VERSION, "baselines": [asdict(b) for b in baselines], "job": meta or {}}, f
        )
    os.replace(tmp, path)


def read_baselines(path: Path) -> dict[int, Baseline] | None:
    """The baselines, or None when the prolog left none (it did not run or did not finish here)."""
    try:
        with path.open() as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    if data.get("version") != SPOOL_VERSION:
        raise ValueError(f"{path}: spool version {data.get('version')!r} is not {SPOOL_VERSION}")
    return {b["minor"]: Baseline(**b) for b in data["baselines"]}


def read_job_meta(path: Path) -> dict[str, object] | None:
    """The job metadata the prolog wrote (user, account, partition, GPUs, start), for the node agent."""
    try:
        with path.open() as f:
            data = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    meta = data.get("job")
    return meta if isinstance(meta, dict) else None


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
