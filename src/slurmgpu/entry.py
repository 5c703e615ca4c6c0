"""Console entry point.

The hooks run before and after every job, so `slurmgpu hook prolog|epilog` must not pay for click or the rest
of the CLI: they are dispatched here directly, and everything else goes to the click application.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "hook" and args[1] in ("prolog", "epilog"):
        from slurmgpu.hooks.runner import run_hook

        return run_hook(args[1])
    from slurmgpu.cli.app import cli

    cli.main(args=args, prog_name="slurmgpu")  # standalone mode: exits with the command's status
