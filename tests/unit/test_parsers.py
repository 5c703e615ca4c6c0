"""Parsers of what users and Slurm hand us: job ids, GPU lists, sacct output, the hook environment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurmgpu.errors import InputError, SlurmError
from slurmgpu.gpu.ids import parse_gpu_list
from slurmgpu.gpu.xid import parse_xids, short_bus_id
from slurmgpu.slurm.commands import ACCOUNTING_FIELDS, JOB_FIELDS, parse_alloc_gpus, parse_sacct
from slurmgpu.slurm.env import job_context
from slurmgpu.slurm.jobid import JobId, parse_job_id

job_ids = st.one_of(
    st.builds(JobId, st.integers(1, 10**9)),
    st.builds(lambda b, t: JobId(b, array_task=t), st.integers(1, 10**9), st.integers(0, 10**6)),
    st.builds(lambda b, o: JobId(b, het_offset=o), st.integers(1, 10**9), st.integers(0, 64)),
)


@given(job_ids)
def test_job_id_round_trip(job: JobId) -> None:
    assert parse_job_id(str(job)) == job


@pytest.mark.parametrize("bad", ["", "abc", "12x", "1_", "_1", "1+", "0", "1_2_3", "-5", "1.5", "12 34"])
def test_bad_job_ids_are_refused_with_the_text(bad: str) -> None:
    with pytest.raises(InputError, match="bad job id"):
        parse_job_id(bad)


@given(st.sets(st.integers(0, 63), max_size=16))
def test_gpu_list_round_trip(minors: set[int]) -> None:
    assert parse_gpu_list(",".join(map(str, sorted(minors)))) == tuple(sorted(minors))


def test_gpu_list_ranges() -> None:
    assert parse_gpu_list("0-3") == (0, 1, 2, 3)
    assert parse_gpu_list("4,0-1") == (0, 1, 4)
    assert parse_gpu_list("") == ()


@pytest.mark.parametrize("bad", ["a", "0,,1", "3-1", "0-", "1;2", "99999"])
def test_bad_gpu_lists_name_the_item(bad: str) -> None:
    with pytest.raises(InputError, match="bad GPU list"):
        parse_gpu_list(bad)


def _line(**over: str) -> str:
    row = {
        "JobID": "1001",
        "JobIDRaw": "1001",
        "User": "alice",
        "Account": "ml-team",
        "Partition": "gpu",
        "State": "COMPLETED",
        "Submit": "2026-11-25T10:00:00",
        "Start": "2026-11-25T10:00:01",
        "End": "2026-11-25T10:00:09",
        "ElapsedRaw": "8",
        "NodeList": "gn[1-2]",
        "AllocTRES": "billing=2,cpu=2,gres/gpu=2,mem=1G,node=2",
        "ExitCode": "0:0",
        "JobName": "train",
    }
    row.update(over)
    return "|".join(row[f] for f in ACCOUNTING_FIELDS)


def test_sacct_job_name_may_hold_the_delimiter() -> None:
    (job,) = parse_sacct(_line(JobName="a|b|c") + "\n", ACCOUNTING_FIELDS)
    assert job.name == "a|b|c" and job.alloc_gpus == 2 and job.elapsed_seconds == 8
    assert job.node_list == "gn[1-2]"


def test_sacct_unknown_times_are_none() -> None:
    (job,) = parse_sacct(_line(Start="Unknown", End="Unknown"), ACCOUNTING_FIELDS)
    assert job.start is None and job.end is None


@pytest.mark.parametrize("line", ["garbage", "1|2|3", _line(JobIDRaw="x"), _line(ElapsedRaw="-1")])
def test_bad_sacct_lines_are_slurm_errors(line: str) -> None:
    with pytest.raises(SlurmError):
        parse_sacct(line, ACCOUNTING_FIELDS)


def test_job_fields_leave_alloc_tres_out() -> None:
    line = "|".join(
        [
            "1001",
            "1001",
            "bob",
            "vision",
            "gpu",
            "RUNNING",
            "2026-11-25T10:00:00",
            "Unknown",
            "Unknown",
            "3",
            "gn1",
            "0:0",
            "x|y",
        ]
    )
    (job,) = parse_sacct(line, JOB_FIELDS)
    assert job.alloc_gpus is None and job.name == "x|y" and job.state == "RUNNING"


def test_alloc_tres_variants() -> None:
    assert parse_alloc_gpus("cpu=1,mem=1G,node=1") is None
    assert parse_alloc_gpus("cpu=1,gres/gpu:h100=4,gres/gpu=4") == 4
    assert parse_alloc_gpus("gres/gpu:a100=2") == 2
    with pytest.raises(SlurmError):
        parse_alloc_gpus("gres/gpu=lots")


def test_xid_lines_map_to_bus_ids() -> None:
    text = (
        "[  12.0] NVRM: Xid (PCI:0000:3b:00): 79, pid=123, GPU has fallen off the bus.\n"
        "6,100,200,-;NVRM: Xid (PCI:0000:5D:00): 48, pid='<unknown>', name=<unknown>, DBE\n"
        "unrelated line\n"
    )
    assert parse_xids(text) == [("0000:3b:00", 79), ("0000:5d:00", 48)]
    assert short_bus_id("00000000:3B:00.0") == "0000:3b:00"


BASE_ENV = {
    "SLURM_JOB_ID": "5",
    "SLURMD_NODENAME": "gn1",
    "SLURM_JOB_USER": "alice",
    "SLURM_JOB_UID": "1001",
    "SLURM_JOB_ACCOUNT": "ml-team",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_GPUS": "0,2",
    "SLURM_CLUSTER_NAME": "c",
}


def test_hook_environment() -> None:
    ctx = job_context(BASE_ENV)
    assert (ctx.job_id, ctx.node, ctx.user, ctx.uid, ctx.account, ctx.gpus, ctx.cluster) == (
        5,
        "gn1",
        "alice",
        1001,
        "ml-team",
        (0, 2),
        "c",
    )
    ctx = job_context({**BASE_ENV, "SLURM_JOB_GPUS": "", "CUDA_VISIBLE_DEVICES": "3"})
    assert ctx.gpus == (3,)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SLURM_JOB_ID", "", "SLURM_JOB_ID is not set"),
        ("SLURM_JOB_ID", "12a", "SLURM_JOB_ID='12a' is not a number"),
        ("SLURM_JOB_GPUS", "x", "bad SLURM_JOB_GPUS"),
        ("SLURM_JOB_UID", "-1", "SLURM_JOB_UID"),
        ("SLURMD_NODENAME", "", "SLURMD_NODENAME is not set"),
    ],
)
def test_bad_hook_environment_names_the_variable(key: str, value: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        job_context({**BASE_ENV, key: value})
