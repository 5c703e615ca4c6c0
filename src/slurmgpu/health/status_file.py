"""The node's last health status in a one-word file, so the prolog can skip the store when all stays well."""

from __future__ import annotations

import contextlib
import os

from slurmgpu.config import Config, safe_filename


def swap_status(config: Config, node: str, status: str) -> str:
    """Write the new status; return the previous one ("ok" when unknown)."""
    path = config.path("state_dir", node) / "health" / f"{safe_filename(node)}.status"
    previous = "ok"
    with contextlib.suppress(FileNotFoundError):
        previous = path.read_text().strip() or "ok"
    if previous != status:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(status + "\n")
        os.replace(tmp, path)
    return previous
