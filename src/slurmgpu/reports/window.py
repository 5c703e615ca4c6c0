"""Times as users type them for --since/--until (pure): `30d`, `12h`, `2w`, `90m` before now, `now`, `today`,
`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` (local time), or epoch seconds."""

from __future__ import annotations

import re
from datetime import datetime

from slurmgpu.errors import InputError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float, *, option: str = "--since") -> float:
    value = text.strip().lower()
    if value == "now":
        return now
    if value == "today":
        d = datetime.fromtimestamp(now)
        return datetime(d.year, d.month, d.day).timestamp()
    m = _RELATIVE.match(value)
    if m:
        return now - float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return float(value)
    try:
        return datetime.fromisoformat(text.strip().replace(" ", "T")).timestamp()
    except ValueError:
        raise InputError(
            f"bad time for {option}: {text!r} (use 30d, 12h, 2w, now, today, YYYY-MM-DD or YYYY-MM-DDTHH:MM)"
        ) from None


def window(since: str, until: str, now: float) -> tuple[float, float]:
    start = parse_when(since, now, option="--since")
    end = parse_when(until, now, option="--until")
    if end <= start:
        raise InputError(f"--until ({until}) must be after --since ({since})")
    return start, end
