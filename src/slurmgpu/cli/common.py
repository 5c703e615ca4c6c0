"""Shared CLI plumbing: config loading and turning library errors into one-line messages."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import click

from slurmgpu.config import Config, load_config
from slurmgpu.errors import SlurmgpuError

F = TypeVar("F", bound=Callable[..., Any])


def load_cli_config() -> Config:
    return load_config()


def handle_errors(fn: F) -> F:
    """Library errors become `Error: <one line>` and exit 1 (click's convention), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlurmgpuError as exc:
            raise click.ClickException(str(exc)) from None
        except sqlite3.Error as exc:
            raise click.ClickException(f"job store: {exc}") from None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")) from None

    return wrapper  # type: ignore[return-value]
