"""Hook logging to syslog and to a file under the state dir, without the cost of importing `logging`."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

_LEVELS = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


class HookLog:
    def __init__(self, path: Path | None, tag: str, *, to_stderr: bool = False) -> None:
        self.path = path
        self.tag = tag
        self.to_stderr = to_stderr
        self._syslog_open = False

    def __call__(self, level: str, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {self.tag}[{os.getpid()}] {level}: {message}"
        if level != "debug":  # debug lines (timings) go to the file only
            self._syslog(level, message)
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
        if self.to_stderr:
            print(line, file=sys.stderr)

    def _syslog(self, level: str, message: str) -> None:
        try:
            import syslog

            if not self._syslog_open:
                syslog.openlog("slurmgpu", syslog.LOG_PID, syslog.LOG_DAEMON)
                self._syslog_open = True
            syslog.syslog(_LEVELS.get(level, 6), f"{self.tag}: {message}")
        except OSError:
            pass  # no syslog socket (containers): the file still has the line
