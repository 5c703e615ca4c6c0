"""Run a hook under decision 5: only a hardware fault may fail it; our own errors are logged and exit 0."""

from __future__ import annotations

import os
import time

from slurmgpu.log import HookLog

EXIT_OK = 0
EXIT_HARDWARE_FAULT = 1  # Slurm drains the node (we set the reason first) and requeues the job


def run_hook(name: str, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    log = HookLog(None, f"{name}")
    started = time.monotonic()
    try:
        from slurmgpu.config import load_config

        config = load_config(env=env)
        node = env.get("SLURMD_NODENAME", "")
        log.path = config.path("log_file", node)
        if name == "prolog":
            from slurmgpu.hooks.prolog import prolog

            code = prolog(config, env, log)
        else:
            from slurmgpu.hooks.epilog import epilog

            code = epilog(config, env, log)
        gpu_job = any(
            env.get(k, "").strip() for k in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
        )
        if gpu_job:
            log(
                "debug",
                f"job {env.get('SLURM_JOB_ID', '?')} done in {time.monotonic() - started:.3f} s, exit {code}",
            )
        return code
    except Exception as exc:
        from slurmgpu.errors import SlurmgpuError

        what = str(exc) if isinstance(exc, SlurmgpuError) else f"{type(exc).__name__}: {exc}"
        log("error", f"job {env.get('SLURM_JOB_ID', '?')} not affected by our error: {what}")
        if not isinstance(exc, SlurmgpuError):
            import traceback

            log("error", "bug: " + " | ".join(traceback.format_exc().strip().splitlines()[-6:]))
        return EXIT_OK
