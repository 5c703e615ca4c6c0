"""Slurm host lists (pure): `gn[1-3,7]`, `gpu[01-04]`, `rack[1-2]-n[1-2]`, `a,b[1-2]` -> node names in order."""

from __future__ import annotations

import re

from slurmgpu.errors import SlurmError

MAX_HOSTS = 100_000
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SlurmError(f"bad host list {text!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise SlurmError(f"bad host list {text!r}")
    items.append(text[start:])
    return [i for i in items if i]


def _ranges(spec: str, whole: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise SlurmError(f"bad host list {whole!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo) or int(hi) - int(lo) > MAX_HOSTS:
            raise SlurmError(f"bad host range {part!r} in {whole!r}")
        width = len(lo) if lo.startswith("0") else 0
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def expand(hostlist: str) -> list[str]:
    """Node names of a Slurm host list, in Slurm's order; '' or 'None assigned' -> []."""
    text = hostlist.strip()
    if not text or text in ("None assigned", "(null)"):
        return []
    names: list[str] = []
    for item in _split_top(text):
        expanded = [""]
        for piece in re.split(r"(\[[^\]]*\])", item):
            if piece.startswith("["):
                values = _ranges(piece[1:-1], hostlist)
                expanded = [e + v for e in expanded for v in values]
            else:
                expanded = [e + piece for e in expanded]
            if len(expanded) > MAX_HOSTS:
                raise SlurmError(f"host list {hostlist[:40]!r} names too many hosts")
        names.extend(expanded)
    return names
