"""What slurmd tells a prolog or epilog about the job, read from its environment (and nothing from the user)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from slurmgpu.errors import InputError
from slurmgpu.gpu.ids import parse_gpu_list


@dataclass(frozen=True)
class JobContext:
    job_id: int
    node: str
    cluster: str
    user: str
    uid: int | None
    account: str
    partition: str
    gpus: tuple[int, ...]  # device minors allocated on this node
    array_job_id: int | None = None
    array_task_id: int | None = None
    het_job_id: int | None = None
    het_job_offset: int | None = None


def _int(env: Mapping[str, str], key: str, *, required: bool = False) -> int | None:
    value = env.get(key, "").strip()
    if not value:
        if required:
            raise InputError(f"{key} is not set: not running under slurmd?")
        return None
    if not value.isdigit():
        raise InputError(f"{key}={value!r} is not a number")
    return int(value)


def job_context(env: Mapping[str, str], *, default_cluster: str = "") -> JobContext:
    """Build the context from a prolog/epilog environment; an InputError names the variable that is wrong."""
    job_id = _int(env, "SLURM_JOB_ID", required=True)
    assert job_id is not None
    node = env.get("SLURMD_NODENAME", "").strip()
    if not node:
        raise InputError("SLURMD_NODENAME is not set: not running under slurmd?")
    # SLURM_JOB_GPUS is the allocation on this node; CUDA_VISIBLE_DEVICES/GPU_DEVICE_ORDINAL are fallbacks that
    # carry the same minors in the prolog/epilog environment.
    for key in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"):
        if env.get(key, "").strip():
            gpus = parse_gpu_list(env[key], name=key)
            break
    else:
        gpus = ()
    return JobContext(
        job_id=job_id,
        node=node,
        cluster=default_cluster or env.get("SLURM_CLUSTER_NAME", "").strip() or "default",
        user=env.get("SLURM_JOB_USER", "").strip() or "unknown",
        uid=_int(env, "SLURM_JOB_UID"),
        account=env.get("SLURM_JOB_ACCOUNT", "").strip(),
        partition=env.get("SLURM_JOB_PARTITION", "").strip(),
        gpus=gpus,
        array_job_id=_int(env, "SLURM_ARRAY_JOB_ID"),
        array_task_id=_int(env, "SLURM_ARRAY_TASK_ID"),
        het_job_id=_int(env, "SLURM_HET_JOB_ID"),
        het_job_offset=_int(env, "SLURM_HET_JOB_OFFSET"),
    )


def cluster_name(configured: str, slurm_conf: str = "", env: Mapping[str, str] | None = None) -> str:
    """The cluster's name for commands run outside a job: the config's, SLURM_CLUSTER_NAME, or slurm.conf's
    ClusterName (the same name the hooks get from slurmd), else "default"."""
    import os

    if configured:
        return configured
    env = os.environ if env is None else env
    if env.get("SLURM_CLUSTER_NAME", "").strip():
        return env["SLURM_CLUSTER_NAME"].strip()
    path = slurm_conf or env.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.split("#", 1)[0].partition("=")
                if key.strip().lower() == "clustername" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return "default"
