"""Which job owns each GPU: /run/slurmgpu/gpu/<minor>, one job id per line.

This is dcgm-exporter's HPC job-mapping format (`--hpc-job-mapping-dir`), so DCGM's exporter and our agent read the
same files. Files are replaced atomically under a lock; several jobs may share a GPU (one line each).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def owner_dir(run_dir: Path) -> Path:
    return run_dir / "gpu"


@contextlib.contextmanager
def _locked(gpu_dir: Path) -> Iterator[None]:
    gpu_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(gpu_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_ids(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _write_ids(path: Path, ids: list[str]) -> None:
    if not ids:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    os.replace(tmp, path)


def claim(run_dir: Path, minors: tuple[int, ...], job_id: int) -> None:
    gpu_dir = owner_dir(run_dir)
    with _locked(gpu_dir):
        for minor in minors:
            path = gpu_dir / str(minor)
            ids = _read_ids(path)
            if str(job_id) not in ids:
                _write_ids(path, [*ids, str(job_id)])


def release(run_dir: Path, minors: tuple[int, ...], job_id: int) -> None:
    gpu_dir = owner_dir(run_dir)
    with _locked(gpu_dir):
        for minor in minors:
            path = gpu_dir / str(minor)
            _write_ids(path, [i for i in _read_ids(path) if i != str(job_id)])


def owners(run_dir: Path) -> dict[int, list[int]]:
    """minor -> job ids, for every GPU that has an owner file."""
    gpu_dir = owner_dir(run_dir)
    out: dict[int, list[int]] = {}
    if not gpu_dir.is_dir():
        return out
    for path in gpu_dir.iterdir():
        if path.name.isdigit():
            out[int(path.name)] = [int(i) for i in _read_ids(path) if i.isdigit()]
    return out
