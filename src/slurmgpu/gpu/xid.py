"""XID errors from the kernel log, the driver's own record (`NVRM: Xid (PCI:0000:3b:00): 79, pid=..., ...`).

NVML has no XID counter (only an event stream from the moment one subscribes), so counts come from the kernel log:
/dev/kmsg on a real node, the simulator's per-node log file otherwise. Lines are mapped to GPUs by PCI bus id.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

_XID = re.compile(
    r"NVRM: Xid \(PCI:([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-9a-fA-F])?\): (\d+)"
)


def short_bus_id(bus_id: str) -> str:
    """'00000000:3B:00.0' (NVML) or '0000:3b:00' (kernel log) -> '0000:3b:00'."""
    domain, bus, device = bus_id.split(".")[0].split(":")
    return f"{int(domain, 16):04x}:{bus.lower()}:{device.lower()}"


def parse_xids(text: str) -> list[tuple[str, int]]:
    """(short PCI bus id, XID code) for every XID line, in order."""
    return [(f"{int(m[1], 16):04x}:{m[2].lower()}:{m[3].lower()}", int(m[4])) for m in _XID.finditer(text)]


def parse_xid_lines(text: str) -> list[tuple[str, int, str]]:
    """(short PCI bus id, XID code, the whole log line) for every XID line, in order. The line carries the
    kernel's timestamp, which tells one occurrence from another."""
    out = []
    for line in text.splitlines():
        m = _XID.search(line)
        if m:
            out.append((f"{int(m[1], 16):04x}:{m[2].lower()}:{m[3].lower()}", int(m[4]), line))
    return out


def count_by_bus(text: str) -> Counter[str]:
    return Counter(bus for bus, _ in parse_xids(text))


def read_kernel_log(path: Path, max_bytes: int = 8 << 20) -> str:
    """The kernel log's text. /dev/kmsg is read record by record without blocking until it runs dry."""
    if str(path) == "/dev/kmsg":
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        chunks: list[bytes] = []
        total = 0
        try:
            while total < max_bytes:
                try:
                    record = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except BrokenPipeError:  # the ring buffer overwrote our position; keep going
                    continue
                if not record:
                    break
                chunks.append(record)
                total += len(record)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", errors="replace")
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class KernelLogTail:
    """Reads only what the kernel log gained since the last call (the node agent polls it every round).

    /dev/kmsg stays open and is read record by record until it runs dry; a plain file (the simulator's) is read
    from the last offset. `read_new()` returns (text, restarted): restarted means the log is not the one read
    before (a file truncated or replaced, as after a simulated reboot) and the text is the whole log again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._offset = 0
        self._ino: int | None = None

    def read_new(self) -> tuple[str, bool]:
        if str(self.path) == "/dev/kmsg":
            return self._read_kmsg(), False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            restarted = self._offset > 0
            self._offset, self._ino = 0, None
            return "", restarted
        restarted = self._ino is not None and (st.st_ino != self._ino or st.st_size < self._offset)
        if restarted:
            self._offset = 0
        self._ino = st.st_ino
        if st.st_size == self._offset:
            return "", restarted  # nothing new: the usual round, without opening the file
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        return data.decode("utf-8", errors="replace"), restarted

    def _read_kmsg(self) -> str:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        chunks = []
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten before we read it: skip to what is there
                continue
            if not record:
                break
            chunks.append(record)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
