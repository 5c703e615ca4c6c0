"""The AdminComment record: codec (Hypothesis: parse(render(x)) == x on the codec's resolution), merging and size,
and the mirror against a fake slurmdbd that behaves like 22.05's (lowercasing, a database shared by writers):
foreign content left alone, concurrent nodes ending complete, the rate of calls bounded, the epilog never failing."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import write_config
from tests.unit.fake_slurm import FakeSlurm

from slurmgpu.config import load_config
from slurmgpu.slurm.admincomment import TokenBucket, flush, mirror_part, write_pending
from slurmgpu.slurm.commands import Slurm
from slurmgpu.store.db import Store
from slurmgpu.store.mirror_codec import (
    MIB,
    PREFIX,
    MirrorFormatError,
    MirrorRecord,
    MirrorTooLarge,
    NodePart,
    contains,
    decode,
    encode,
    fit,
    is_ours,
    merge,
    quantize,
    record_for_node,
)
from slurmgpu.store.records import JobGpuUsage, JobMeta
from slurmgpu.store.usage import UsageSums

MODELS = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Tesla V100-SXM2-32GB"]


def meta(job_id: int = 501, **kw: object) -> JobMeta:
    base: dict[str, object] = dict(
        cluster="c",
        job_id=job_id,
        user="alice",
        uid=1001,
        account="ml-team",
        partition="gpu",
        array_job_id=None,
        array_task_id=None,
        het_job_id=None,
        het_job_offset=None,
        first_seen_epoch_seconds=0.0,
        last_update_epoch_seconds=0.0,
    )
    base.update(kw)
    return JobMeta(**base)  # type: ignore[arg-type]


def gpu(
    node: str, minor: int, util: float | None = 50.0, energy: float | None = 1000.0, **kw: object
) -> JobGpuUsage:
    base: dict[str, object] = dict(
        node=node,
        minor=minor,
        uuid=f"GPU-{node}-{minor}",
        model=MODELS[0],
        memory_total_bytes=81559 * MIB,
        start_epoch_seconds=1_795_573_834.123,
        end_epoch_seconds=1_795_577_434.987,
        energy_joules=energy,
        utilization_mean_pct=util,
        utilization_max_pct=None if util is None else min(100.0, util + 10),
        memory_peak_bytes=12 * 1024 * MIB,
        memory_utilization_mean_pct=None if util is None else util / 2,
        source="nvml-accounting" if util is not None else "none",
    )
    base.update(kw)
    return JobGpuUsage(**base)  # type: ignore[arg-type]


# -- codec ------------------------------------------------------------------------------------------------------

finite = {"allow_nan": False, "allow_infinity": False}
gpus_strategy = st.builds(
    JobGpuUsage,
    node=st.just("gn1"),
    minor=st.integers(0, 63),
    uuid=st.none() | st.text(max_size=40),
    model=st.none() | st.sampled_from(MODELS) | st.text(max_size=30),
    memory_total_bytes=st.none() | st.integers(0, 200 << 30),
    start_epoch_seconds=st.floats(1e9, 2e9, **finite),
    end_epoch_seconds=st.floats(1e9, 2e9, **finite),
    energy_joules=st.none() | st.floats(0, 1e10, **finite),
    utilization_mean_pct=st.none() | st.floats(0, 100, **finite),
    utilization_max_pct=st.none() | st.floats(0, 100, **finite),
    memory_peak_bytes=st.none() | st.integers(0, 200 << 30),
    memory_utilization_mean_pct=st.none() | st.floats(0, 100, **finite),
    source=st.sampled_from(["nvml-accounting", "none", "agent"]),
)
names = st.text(min_size=1, max_size=20)
records = st.builds(
    lambda m, node_gpus: MirrorRecord(
        cluster=m.cluster,
        job_id=m.job_id,
        user=m.user,
        uid=m.uid,
        account=m.account,
        partition=m.partition,
        array_job_id=m.array_job_id,
        array_task_id=m.array_task_id,
        parts=tuple(
            NodePart(node, tuple(dataclasses.replace(g, node=node) for g in gs))
            for node, gs in sorted(node_gpus.items())
        ),
    ),
    st.builds(
        JobMeta,
        cluster=names,
        job_id=st.integers(1, 2**31),
        user=names,
        uid=st.none() | st.integers(0, 2**31),
        account=st.text(max_size=20),
        partition=st.text(max_size=20),
        array_job_id=st.none() | st.integers(1, 2**31),
        array_task_id=st.none() | st.integers(0, 10**6),
        het_job_id=st.none(),
        het_job_offset=st.none(),
        first_seen_epoch_seconds=st.just(0.0),
        last_update_epoch_seconds=st.just(0.0),
    ),
    st.dictionaries(
        st.from_regex(r"[a-z]{1,4}[0-9]{1,4}", fullmatch=True),
        st.lists(gpus_strategy, max_size=8),
        max_size=4,
    ),
)


@settings(max_examples=200, deadline=None)
@given(records)
def test_parse_of_render_is_exact_on_the_codecs_resolution(record: MirrorRecord) -> None:
    text = encode(record)
    assert text.startswith(PREFIX) and text == text.lower()  # survives 22.05's lowercasing as is
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz234567:1")
    q = decode(text)
    assert decode(encode(q)) == q  # parse(render(x)) == x for x on the resolution
    assert encode(q) == text
    assert decode(text.upper().replace("SG1:", "sg1:")) == q  # case does not matter
    for original, part in zip(record.parts, q.parts, strict=True):
        for a, b in zip(original.gpus, part.gpus, strict=True):
            assert b.uuid is None and b.model == a.model and b.source == a.source and b.minor == a.minor
            assert abs(b.start_epoch_seconds - a.start_epoch_seconds) <= 0.005 + 1e-6
            assert abs(b.end_epoch_seconds - a.end_epoch_seconds) <= 0.005 + 1e-6
            for x, y, tol in (
                (a.energy_joules, b.energy_joules, 0.05),
                (a.utilization_mean_pct, b.utilization_mean_pct, 0.005),
                (a.memory_peak_bytes, b.memory_peak_bytes, MIB / 2),
            ):
                assert (x is None) == (y is None)
                if x is not None and y is not None:
                    assert abs(x - y) <= tol + 1e-6 * abs(x)


def test_size_stays_at_a_few_dozen_characters_per_gpu() -> None:
    parts = tuple(
        NodePart(f"gn{n}", tuple(gpu(f"gn{n}", m, util=10.0 * m) for m in range(8))) for n in range(4)
    )
    record = dataclasses.replace(record_for_node(meta(), "gn0", ()), parts=parts)
    text = encode(record)
    assert len(text) / 32 < 120, len(text)  # measured: about 80 characters per GPU
    one = encode(record_for_node(meta(), "gn1", [gpu("gn1", 0)]))
    assert len(one) < 300, len(one)


def test_other_tools_content_and_damage() -> None:
    assert not is_ours("JS1:H4sIAAAAAAAAA") and not is_ours("") and is_ours("SG1:abc")
    with pytest.raises(MirrorFormatError, match="not a slurmgpu record"):
        decode("JS1:abc")
    with pytest.raises(MirrorFormatError):
        decode("sg1:notbase32!!")
    good = encode(record_for_node(meta(), "gn1", [gpu("gn1", 0)]))
    with pytest.raises(MirrorFormatError):
        decode(good[:-7])
    bomb = (
        "sg1:"
        + __import__("base64").b32encode(__import__("zlib").compress(b"[" * (8 << 20))).decode().lower()
    )
    with pytest.raises(MirrorFormatError):
        decode(bomb.rstrip("="))


def test_merge_replaces_a_nodes_part_and_keeps_the_others() -> None:
    a = record_for_node(meta(), "gn1", [gpu("gn1", 0)])
    b = record_for_node(meta(), "gn2", [gpu("gn2", 0), gpu("gn2", 1)])
    ab = merge(merge(None, a), b)
    assert ab.nodes == ("gn1", "gn2") and contains(ab, a) and contains(ab, b)
    a2 = record_for_node(meta(), "gn1", [gpu("gn1", 0, util=99.0)])
    merged = merge(ab, a2)
    assert contains(merged, a2) and not contains(merged, a) and contains(merged, b)
    assert merge(merged, a2) == merged  # idempotent: an epilog run twice
    other_job = record_for_node(meta(job_id=502), "gn1", [gpu("gn1", 0)])
    assert merge(ab, other_job) == other_job  # a reused job id does not mix records
    assert not contains(other_job, a)


def realistic_gpu(rng: random.Random, node: str, minor: int) -> JobGpuUsage:
    """Values as measured ones are: every GPU different (uniform test rows would compress to nothing)."""
    start = 1_795_573_834 + rng.uniform(0, 2)
    return gpu(
        node,
        minor,
        util=rng.uniform(0, 100),
        energy=rng.uniform(1e5, 3e6),
        start_epoch_seconds=start,
        end_epoch_seconds=start + 3600 + rng.uniform(0, 2),
        memory_peak_bytes=rng.randrange(80 << 30),
    )


def test_fit_summarises_then_collapses_and_keeps_the_totals() -> None:
    rng = random.Random(7)
    parts = [
        record_for_node(meta(), f"gn{n:03d}", [realistic_gpu(rng, f"gn{n:03d}", m) for m in range(8)])
        for n in range(60)
    ]
    record: MirrorRecord | None = None
    for p in parts:
        record = merge(record, p)
    assert record is not None
    full = record.groups(5.0)
    small, text = fit(record, 4000, 5.0)
    assert len(text) <= 4000 and small.summarised_nodes()
    assert decode(text) == small
    for g, h in zip(full, small.groups(5.0), strict=True):
        assert g.sums.gpus == h.sums.gpus == 480
        assert g.sums.gpu_seconds == pytest.approx(h.sums.gpu_seconds, abs=1)
        assert g.sums.used_gpu_seconds == pytest.approx(h.sums.used_gpu_seconds, abs=1)
        assert g.sums.idle_gpu_seconds == pytest.approx(h.sums.idle_gpu_seconds, abs=1)
    tiny, text = fit(record, 1200, 5.0)
    assert tiny.collapsed is not None and len(tiny.collapsed.nodes) == 60 and len(text) <= 1200
    assert tiny.groups(5.0)[0].sums.gpus == 480
    late = record_for_node(meta(), "gn007", [gpu("gn007", 0)])
    assert merge(tiny, late) == tiny and contains(tiny, late)  # a collapsed node stays counted once
    with pytest.raises(MirrorTooLarge):
        fit(record, 300, 5.0)


def quantize_gpu(u: JobGpuUsage) -> JobGpuUsage:
    return quantize(record_for_node(meta(), u.node, [u])).parts[0].gpus[0]


# -- the mirror against a fake slurmdbd ---------------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> FakeSlurm:
    return FakeSlurm(tmp_path)


def mirror_config(tmp_path: Path, fake: FakeSlurm, **reports: object) -> Path:
    values = {
        "mirror": '"inline"',
        "mirror_jitter_seconds": "0.0",
        "mirror_settle_seconds": "0.05",
        "mirror_calls_per_minute": "6000.0",
        "mirror_burst": "100",
    }
    values.update({k: str(v) for k, v in reports.items()})
    extra = "[reports]\n" + "\n".join(f"{k} = {v}" for k, v in values.items()) + "\n"
    path = write_config(tmp_path, extra=extra)
    path.write_text(path.read_text().replace(f"{tmp_path}/no-slurm-here", str(fake.bin)))
    return path


def test_flush_writes_the_part_and_reading_it_back_finds_it(tmp_path: Path, fake: FakeSlurm) -> None:
    config = load_config(mirror_config(tmp_path, fake))
    fake.add_job(501)
    part = record_for_node(meta(), "gn1", [gpu("gn1", 0), gpu("gn1", 1, util=0.0)])
    write_pending(config, "gn1", part, "gn1")
    lines: list[tuple[str, str]] = []
    assert flush(config, "gn1", lambda level, msg: lines.append((level, msg))) == 1
    stored = decode(fake.comment(501))
    assert stored == part and contains(stored, part)
    assert not list((tmp_path / "state" / "mirror").glob("*.json"))  # done: nothing pending
    programs = [c[1] for c in fake.calls()]
    assert programs == ["sacct", "sacctmgr", "sacct"]  # read, write, read back


def test_each_helper_takes_only_its_own_nodes_parts(tmp_path: Path, fake: FakeSlurm) -> None:
    config = load_config(mirror_config(tmp_path, fake))
    for job, node in ((510, "gn1"), (511, "gn1.x"), (512, "xgn1")):
        fake.add_job(job)
        write_pending(config, node, record_for_node(meta(job_id=job), node, [gpu(node, 0)]), node)
    assert flush(config, "gn1", lambda level, msg: None) == 1
    assert fake.comment(510) and not fake.comment(511) and not fake.comment(512)
    assert flush(config, "gn1.x", lambda level, msg: None) == 1 and fake.comment(511)


def test_another_tools_comment_is_left_alone_and_noted(tmp_path: Path, fake: FakeSlurm) -> None:
    config = load_config(mirror_config(tmp_path, fake))
    fake.add_job(502, AdminComment="JS1:H4sIAAAAAAAAA3u")
    write_pending(config, "gn1", record_for_node(meta(job_id=502), "gn1", [gpu("gn1", 0)]), "gn1")
    lines: list[tuple[str, str]] = []
    flush(config, "gn1", lambda level, msg: lines.append((level, msg)))
    assert fake.comment(502) == "JS1:H4sIAAAAAAAAA3u"
    assert [c[1] for c in fake.calls()] == ["sacct"]  # never written
    assert any("another tool" in m for _, m in lines)
    store = Store.open(config.path("database"))
    notes = store.job_notes("c", 502)
    store.close()
    assert notes and notes[0]["kind"] == "admincomment-foreign" and "JS1" in notes[0]["detail"]


def test_a_damaged_record_of_ours_is_replaced(tmp_path: Path, fake: FakeSlurm) -> None:
    config = load_config(mirror_config(tmp_path, fake))
    fake.add_job(503, AdminComment="sg1:damaged")
    part = record_for_node(meta(job_id=503), "gn1", [gpu("gn1", 0)])
    write_pending(config, "gn1", part, "gn1")
    flush(config, "gn1", lambda level, msg: None)
    assert decode(fake.comment(503)) == part


def test_unknown_job_or_failing_writes_stay_pending_for_the_next_epilog(
    tmp_path: Path, fake: FakeSlurm
) -> None:
    config = load_config(mirror_config(tmp_path, fake, mirror_max_attempts=2))
    fake.add_job(504)
    fake.set("fail_writes", True)
    write_pending(config, "gn1", record_for_node(meta(job_id=504), "gn1", [gpu("gn1", 0)]), "gn1")
    assert flush(config, "gn1", lambda level, msg: None) == 0
    assert len(list((tmp_path / "state" / "mirror").glob("*.json"))) == 1
    assert sum(1 for c in fake.calls() if c[1] == "sacctmgr") == 2  # bounded: mirror_max_attempts
    fake.set("fail_writes", False)
    assert flush(config, "gn1", lambda level, msg: None) == 1  # the next epilog's helper finishes it
    assert contains(decode(fake.comment(504)), record_for_node(meta(job_id=504), "gn1", [gpu("gn1", 0)]))


def _node_epilog(config_path: str, node: str, seed: int) -> None:
    config = load_config(Path(config_path))
    part = record_for_node(meta(job_id=600), node, [gpu(node, m, util=10.0 * m) for m in range(4)])
    write_pending(config, node, part, "gn[1-3]")
    flush(config, node, lambda level, msg: None, rng=random.Random(seed))


@pytest.mark.parametrize("round_", range(4))
def test_concurrent_nodes_of_one_job_end_complete(tmp_path: Path, fake: FakeSlurm, round_: int) -> None:
    """Three nodes' helpers at once, writes slowed down as on a busy slurmdbd: read-merge-write races happen, and
    reading back and rewriting still ends with every node's part."""
    path = mirror_config(tmp_path, fake, mirror_settle_seconds=0.15, mirror_jitter_seconds=0.02)
    fake.add_job(600, NodeList="gn[1-3]")
    fake.set("delay", 0.2)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_node_epilog, args=(str(path), f"gn{n}", round_ * 10 + n)) for n in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    record = decode(fake.comment(600))
    assert record.nodes == ("gn1", "gn2", "gn3")
    assert sum(len(p.gpus) for p in record.parts) == 12


def test_concurrent_nodes_without_stagger_still_end_complete(tmp_path: Path, fake: FakeSlurm) -> None:
    """The worst case: all three start at the same instant (no rank stagger, as if the node list were unknown)."""
    path = mirror_config(tmp_path, fake, mirror_settle_seconds=0.15, mirror_jitter_seconds=0.0)
    config = load_config(path)
    fake.add_job(601, NodeList="gn[1-3]")
    fake.set("delay", 0.2)

    def one(node: str) -> None:
        part = record_for_node(meta(job_id=601), node, [gpu(node, 0)])
        bucket = TokenBucket(tmp_path / f"{node}.bucket", 6000, 100, sleep=time.sleep, clock=time.time)
        slurm = Slurm(fake.bin, "", 10.0)
        mirror_part(
            slurm,
            part,
            multi_node=True,
            idle_pct=5.0,
            max_chars=4000,
            max_attempts=8,
            settle_seconds=config.reports.mirror_settle_seconds,
            bucket=bucket,
            sleep=time.sleep,
            rng=random.Random(),
            log=lambda level, msg: None,
        )

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=one, args=(f"gn{n}",)) for n in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert decode(fake.comment(601)).nodes == ("gn1", "gn2", "gn3")
    writes = sum(1 for c in fake.calls() if c[1] == "sacctmgr")
    assert 3 <= writes <= 3 * 8


def test_calls_to_slurmdbd_are_rate_limited(tmp_path: Path, fake: FakeSlurm) -> None:
    """20 jobs end at once on one node: the helper's sacct and sacctmgr calls stay within the token bucket."""
    per_minute, burst = 300.0, 4
    config = load_config(
        mirror_config(
            tmp_path, fake, mirror_calls_per_minute=per_minute, mirror_burst=burst, mirror_settle_seconds=0.0
        )
    )
    for job in range(700, 720):
        fake.add_job(job)
        write_pending(config, "gn1", record_for_node(meta(job_id=job), "gn1", [gpu("gn1", 0)]), "gn1")
    began = time.time()
    assert flush(config, "gn1", lambda level, msg: None) == 20
    times = sorted(c[0] for c in fake.calls())
    assert len(times) == 60  # read, write, read back per job
    rate = per_minute / 60.0
    for i, t in enumerate(times):  # in any interval [t_i, t_j]: calls <= burst + 1 + rate x length (+ slack)
        for j in range(i + burst + 1, len(times)):
            assert j - i + 1 <= burst + 1 + rate * (times[j] - t) + 1, (i, j, times[j] - t)
    assert time.time() - began >= (60 - burst) / rate * 0.9  # it really waited


def test_token_bucket_with_a_fake_clock(tmp_path: Path) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(tmp_path / "b", 60.0, 3, sleep=sleep, clock=lambda: now[0])
    for _ in range(3):
        bucket.take()
    assert slept == []
    bucket.take(2)
    assert slept == [pytest.approx(2.0)]
    bucket.take()
    bucket.refund()
    bucket.save()
    again = TokenBucket(tmp_path / "b", 60.0, 3, sleep=sleep, clock=lambda: now[0])
    assert again.tokens == pytest.approx(bucket.tokens)


# -- through the epilog ---------------------------------------------------------------------------------------------

ENV = {
    "SLURM_JOB_ID": "801",
    "SLURMD_NODENAME": "gn1",
    "SLURM_JOB_USER": "alice",
    "SLURM_JOB_UID": "1001",
    "SLURM_JOB_ACCOUNT": "ml-team",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_GPUS": "0,1",
    "SLURM_CLUSTER_NAME": "c",
    "SLURM_NODELIST": "gn1",
}


def hook(name: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "SLURMGPU_CONFIG": str(cfg), **ENV}
    return subprocess.run(
        [sys.executable, "-m", "slurmgpu", "hook", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_the_epilog_mirrors_its_part(tmp_path: Path, fake: FakeSlurm, mode: str) -> None:
    cfg = mirror_config(tmp_path, fake, mirror=f'"{mode}"')
    fake.add_job(801)
    assert hook("prolog", cfg).returncode == 0
    began = time.monotonic()
    assert hook("epilog", cfg).returncode == 0
    epilog_seconds = time.monotonic() - began
    deadline = time.monotonic() + 30
    while not fake.comment(801) and time.monotonic() < deadline:
        time.sleep(0.1)
    record = decode(fake.comment(801))
    assert record.nodes == ("gn1",) and [g.minor for g in record.parts[0].gpus] == [0, 1]
    assert (record.user, record.account, record.partition, record.uid) == ("alice", "ml-team", "gpu", 1001)
    store = Store.open(cfg.parent / "state" / "slurmgpu.db")
    local = store.job("unit", 801)
    store.close()
    assert local is not None
    for mine, theirs in zip(local.gpus, record.parts[0].gpus, strict=True):
        assert theirs.energy_joules == pytest.approx(mine.energy_joules, abs=0.05)
        assert theirs.end_epoch_seconds == pytest.approx(mine.end_epoch_seconds, abs=0.005)
    if mode == "background":
        assert epilog_seconds < 5.0
        log = (cfg.parent / "state" / "slurmgpu.log").read_text()
        deadline = time.monotonic() + 10
        while "in AdminComment" not in log and time.monotonic() < deadline:
            time.sleep(0.1)
            log = (cfg.parent / "state" / "slurmgpu.log").read_text()
        assert "GPU record of gn1 in AdminComment" in log


def test_a_broken_slurm_never_fails_the_epilog(tmp_path: Path, fake: FakeSlurm) -> None:
    cfg = mirror_config(tmp_path, fake, mirror_max_attempts=1)
    for prog in ("sacct", "sacctmgr"):
        (fake.bin / prog).write_text(
            "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n"
        )
    assert hook("prolog", cfg).returncode == 0
    result = hook("epilog", cfg)
    assert result.returncode == 0
    store = Store.open(cfg.parent / "state" / "slurmgpu.db")
    assert store.job("unit", 801) is not None  # the store has it; the mirror waits for the next epilog
    store.close()
    assert len(list((cfg.parent / "state" / "mirror").glob("*.json"))) == 1
    assert "AdminComment" in (cfg.parent / "state" / "slurmgpu.log").read_text()


def test_mirror_off_writes_nothing(tmp_path: Path, fake: FakeSlurm) -> None:
    cfg = mirror_config(tmp_path, fake, mirror='"off"')
    fake.add_job(801)
    assert hook("prolog", cfg).returncode == 0 and hook("epilog", cfg).returncode == 0
    assert fake.comment(801) == "" and fake.calls() == []


def test_usage_sums_survive_the_codec() -> None:
    parts = [gpu("gn1", 0, util=2.0), gpu("gn1", 1, util=None, energy=None), gpu("gn1", 2)]
    record = record_for_node(meta(), "gn1", parts)
    (group,) = record.groups(5.0)
    s = group.sums
    assert s.gpus == 3 and s.idle_gpu_seconds == pytest.approx(3600.864, abs=0.02)
    assert s.util_known_gpu_seconds == pytest.approx(2 * 3600.864, abs=0.03)
    assert UsageSums.total([s, s]).gpus == 6
    assert json.loads(json.dumps(dataclasses.asdict(group)))["model"] == MODELS[0]
