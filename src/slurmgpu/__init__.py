"""slurmgpu: accountable and safe GPU use on Slurm clusters."""

__version__ = "0.1.0"
