"""Slurm's GPU lists: SLURM_JOB_GPUS, CUDA_VISIBLE_DEVICES and GPU_DEVICE_ORDINAL in prolog and epilog.

In the prolog/epilog these hold device minor numbers (/dev/nvidiaN), not NVML ordinals: resolve them through the
minor number (GpuReading.minor), never by position.
"""

from __future__ import annotations

from slurmgpu.errors import InputError

MAX_GPU_INDEX = 1023


def parse_gpu_list(text: str, *, name: str = "GPU list") -> tuple[int, ...]:
    """'0,1,3' or '0-3' or '' -> sorted unique minors. Anything else is an InputError naming the bad item."""
    text = text.strip()
    if not text or text.lower() in ("none", "nodevfiles"):
        return ()
    minors: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise InputError(f"bad {name} {text!r}: {item!r} is not a GPU index or range")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first or last > MAX_GPU_INDEX:
            raise InputError(f"bad {name} {text!r}: {item!r} is out of range")
        minors.update(range(first, last + 1))
    return tuple(sorted(minors))
