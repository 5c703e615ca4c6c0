"""Exceptions that carry a one-line, user-facing explanation.

Everything the CLI or a hook can explain to a person derives from SlurmgpuError; anything else is our bug.
"""


class SlurmgpuError(Exception):
    """A failure we can explain in one line (bad input, unreachable system, missing job)."""


class ConfigError(SlurmgpuError):
    """The config file is unreadable or holds a bad key or value."""


class InputError(SlurmgpuError):
    """A malformed job id, GPU list, environment variable or argument."""


class SlurmError(SlurmgpuError):
    """A Slurm command failed or printed something we cannot parse."""


class StoreError(SlurmgpuError):
    """The job store cannot be opened, migrated or written."""


class NotFoundError(SlurmgpuError):
    """The job (or node) asked for is not known."""
