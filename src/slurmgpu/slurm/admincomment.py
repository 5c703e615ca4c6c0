"""The cluster-wide record: each node's part of a job's GPU record mirrored into the job's AdminComment in Slurm's
accounting database, so any login node can report on every node's GPUs (`--source slurmdbd`, `slurmgpu job`).

Best effort, and says so: nothing here fails the epilog or the job. The epilog only writes this node's part to a
root-only pending file and starts a detached helper (`[reports] mirror = "background"`, the default; "inline" does
the work in the epilog, "off" nothing). One helper per node holds a lock and works through the node's pending parts:

- read the AdminComment (sacct); content that is not ours (`sg1:`), for example jobstats' `JS1:`, is left alone and
  a job note is stored; a damaged record of ours is replaced;
- merge this node's part into the record, make it fit `mirror_max_chars` (summarise per node, then collapse), write
  it (`sacctmgr -i modify job where jobid=N set AdminComment=...`; `scontrol update` refuses finished jobs);
- wait, read it back, and write again (with growing, jittered waits) until the part is there. sacctmgr offers no
  compare-and-swap: two nodes of one job can read the same old value and the later write drops the earlier part.
  Reading back after a settle time finds that and writes again; for multi-node jobs the part must be seen twice,
  far enough apart that a writer which read before our write has written meanwhile. Nodes of a multi-node job also
  start at staggered times (their position in the node list), so they rarely collide at all.

Load on slurmdbd is bounded per node: every sacct and sacctmgr call takes a token from a bucket
(`mirror_calls_per_minute`, `mirror_burst`), a random delay before the first call spreads jobs that end together,
and a part is written at most `mirror_max_attempts` times per helper run; what is left waits for the next epilog
on that node (parts older than a week are dropped with a job note).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from slurmgpu.config import Config, load_config
from slurmgpu.errors import SlurmError, SlurmgpuError
from slurmgpu.log import HookLog
from slurmgpu.slurm.commands import Slurm
from slurmgpu.slurm.env import JobContext
from slurmgpu.slurm.hostlist import expand
from slurmgpu.store.mirror_codec import (
    MirrorFormatError,
    MirrorRecord,
    MirrorTooLarge,
    contains,
    decode,
    fit,
    is_ours,
    merge,
    record_for_node,
)
from slurmgpu.store.records import JobGpuUsage, JobMeta

PENDING_MAX_AGE_SECONDS = 7 * 86400
HELPER_BUDGET_SECONDS = 900.0  # one helper run stops after this; the rest waits for the next epilog
MAX_STAGGER_SLOTS = 8
Sleep = Callable[[float], None]


def mirror_job_record(
    config: Config,
    ctx: JobContext,
    usage: list[JobGpuUsage],
    log: HookLog,
    env: Mapping[str, str] | None = None,
) -> None:
    """Hand this node's part of the job's GPU record to the mirror (best effort: logs, never raises)."""
    try:
        mode = config.reports.mirror
        if mode == "off" or not usage:
            return
        env = os.environ if env is None else env
        part = record_for_node(_meta(ctx), ctx.node, usage)
        write_pending(
            config, ctx.node, part, env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
        )
        if mode == "inline":
            flush(config, ctx.node, log)
        else:
            _start_helper(config, ctx.node, env)
    except Exception as exc:  # decision 5: our error never fails the epilog
        log(
            "warning",
            f"job {ctx.job_id}: GPU record not mirrored to AdminComment: {type(exc).__name__}: {exc}",
        )


def _meta(ctx: JobContext) -> JobMeta:
    return JobMeta(
        cluster=ctx.cluster,
        job_id=ctx.job_id,
        user=ctx.user,
        uid=ctx.uid,
        account=ctx.account,
        partition=ctx.partition,
        array_job_id=ctx.array_job_id,
        array_task_id=ctx.array_task_id,
        het_job_id=ctx.het_job_id,
        het_job_offset=ctx.het_job_offset,
        first_seen_epoch_seconds=0.0,
        last_update_epoch_seconds=0.0,
    )


def pending_dir(config: Config, node: str) -> Path:
    return config.path("state_dir", node) / "mirror"


def write_pending(config: Config, node: str, part: MirrorRecord, node_list: str) -> Path:
    """This node's part, root-only, until the helper has it in slurmdbd (atomic write)."""
    from slurmgpu.store.mirror_codec import encode

    directory = pending_dir(config, node)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    safe_cluster = "".join(c if c.isalnum() or c in "-_" else "_" for c in part.cluster)
    path = directory / f"{safe_cluster}.{node}.{part.job_id}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"record": encode(part), "node": node, "nodes": node_list, "created": time.time()}, f)
    os.replace(tmp, path)
    return path


def _start_helper(config: Config, node: str, hook_env: Mapping[str, str]) -> None:
    """A detached helper (own session, no inherited output): the epilog returns at once."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    if config.source and config.source.startswith("/"):
        env["SLURMGPU_CONFIG"] = config.source
    if hook_env.get("SLURM_CONF"):
        env["SLURM_CONF"] = hook_env["SLURM_CONF"]
    subprocess.Popen(
        [sys.executable, "-m", "slurmgpu.slurm.admincomment", node],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd="/",
        env=env,
    )


# -- the helper ---------------------------------------------------------------------------------------------------


class TokenBucket:
    """At most `burst` calls at once, then `per_minute` calls a minute; the state survives helper runs (a file)."""

    def __init__(
        self, path: Path, per_minute: float, burst: int, *, sleep: Sleep, clock: Callable[[], float]
    ):
        self.path = path
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.sleep = sleep
        self.clock = clock
        self.calls = 0
        try:
            state = json.loads(path.read_text())
            self.tokens, self.stamp = float(state["tokens"]), float(state["stamp"])
        except (OSError, ValueError, KeyError, TypeError):
            self.tokens, self.stamp = self.burst, clock()

    def take(self, count: int = 1) -> None:
        """Wait until `count` calls may be made now, and take them."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < count:
            self.sleep((count - self.tokens) / self.rate)
            self.stamp = self.clock()
            self.tokens = float(count)
        self.tokens -= count
        self.calls += count

    def refund(self, count: int = 1) -> None:
        """Give back calls taken but not made."""
        self.tokens = min(self.burst, self.tokens + count)
        self.calls -= count

    def save(self) -> None:
        with contextlib.suppress(OSError):
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"tokens": self.tokens, "stamp": self.stamp}))
            os.replace(tmp, self.path)


@dataclass
class Outcome:
    status: str  # done | foreign | too-large | retry-later
    writes: int = 0
    detail: str = ""


def mirror_part(
    slurm: Slurm,
    part: MirrorRecord,
    *,
    multi_node: bool,
    idle_pct: float,
    max_chars: int,
    max_attempts: int,
    settle_seconds: float,
    bucket: TokenBucket,
    sleep: Sleep,
    rng: random.Random,
    log: Callable[[str, str], None],
) -> Outcome:
    """Read, merge, write, read back until this node's part is in the job's AdminComment (see the module doc)."""
    job_id = part.job_id
    writes = 0
    confirmations = 0
    needed = 2 if multi_node else 1
    unknown = 0
    while True:
        # tokens for the read and a possible write, taken together: no wait may fall between reading and writing
        # (a write long after its read is the stale merge that drops other nodes' parts)
        bucket.take(2)
        try:
            current = slurm.admin_comments([job_id]).get(job_id)
        except SlurmError as exc:
            log("warning", f"job {job_id}: reading AdminComment failed: {exc}")
            current = None
        if current is None:  # slurmdbd does not know the job yet (it lags the controller), or sacct failed
            bucket.refund()
            unknown += 1
            if unknown > max_attempts:
                return Outcome("retry-later", writes, "the accounting database does not show the job")
            sleep(min(30.0, settle_seconds * 2**unknown) * (0.5 + rng.random()))
            continue
        existing = None
        if current.strip():
            if not is_ours(current):
                bucket.refund()
                return Outcome(
                    "foreign", writes, f"AdminComment holds another tool's content ({current[:12]!r}...)"
                )
            try:
                existing = decode(current)
            except MirrorFormatError as exc:
                log("warning", f"job {job_id}: replacing a damaged slurmgpu AdminComment ({exc})")
        if existing is not None and contains(existing, part):
            bucket.refund()
            confirmations += 1
            if confirmations >= needed:
                return Outcome("done", writes)
            # a node that read before our write may still write its stale merge: look again later
            sleep(settle_seconds * (2 + rng.random()))
            continue
        confirmations = 0
        if writes >= max_attempts:
            bucket.refund()
            return Outcome("retry-later", writes, f"part not in place after {writes} writes")
        try:
            merged, text = fit(merge(existing, part), max_chars, idle_pct)
        except MirrorTooLarge as exc:
            bucket.refund()
            return Outcome("too-large", writes, str(exc))
        try:
            slurm.set_admin_comment(job_id, text)
        except SlurmgpuError as exc:
            log("warning", f"job {job_id}: writing AdminComment failed: {exc}")
        writes += 1
        if merged.summarised_nodes():
            log(
                "info",
                f"job {job_id}: AdminComment record summarised ({len(merged.summarised_nodes())} node(s))",
            )
        # settle, growing with each rewrite (contention), jittered so that rewriting nodes drift apart
        sleep(min(8.0, settle_seconds * 2 ** (writes - 1)) * (1 + rng.random()))


def flush(
    config: Config,
    node: str,
    log: Callable[[str, str], None],
    *,
    slurm: Slurm | None = None,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> int:
    """Work through the node's pending parts under the node's lock (another helper holding it does the work).
    Returns how many parts were finished."""
    directory = pending_dir(config, node)
    if not directory.is_dir():
        return 0
    rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
    slurm = slurm or Slurm.for_config(config)
    r = config.reports
    finished = 0
    tried: set[str] = set()
    started = clock()
    while True:
        lock = open(directory / f"{node}.lock", "a")  # noqa: SIM115 - held across the loop below
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return finished  # the holder sees our file: it lists the directory again before letting go
            bucket = TokenBucket(
                directory / f"{node}.bucket",
                r.mirror_calls_per_minute,
                r.mirror_burst,
                sleep=sleep,
                clock=clock,
            )
            try:
                while clock() - started < HELPER_BUDGET_SECONDS:
                    todo = [p for p in _pending(directory, node) if p.name not in tried]
                    if not todo:
                        break
                    for path in todo:
                        tried.add(path.name)
                        finished += _process(config, node, path, slurm, bucket, sleep, clock, rng, log)
            finally:
                bucket.save()
        finally:
            lock.close()
        # a part that arrived after the last listing, while its helper found the lock taken
        if (
            not [p for p in _pending(directory, node) if p.name not in tried]
            or clock() - started >= HELPER_BUDGET_SECONDS
        ):
            return finished


def _pending(directory: Path, node: str) -> list[Path]:
    """This node's pending parts (`<cluster>.<node>.<job>.json`; the cluster name holds no dot), oldest first."""
    paths = []
    for p in directory.glob(f"*.{node}.*.json"):
        cluster_and_node, _, job = p.name[: -len(".json")].rpartition(".")
        if not p.name.startswith(".") and job.isdigit() and cluster_and_node.partition(".")[2] == node:
            paths.append(p)
    return sorted(paths, key=lambda p: (_mtime(p), p.name))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0  # finished meanwhile: processing it finds nothing to do


def _process(
    config: Config,
    node: str,
    path: Path,
    slurm: Slurm,
    bucket: TokenBucket,
    sleep: Sleep,
    clock: Callable[[], float],
    rng: random.Random,
    log: Callable[[str, str], None],
) -> int:
    if not path.exists():
        return 0
    try:
        data = json.loads(path.read_text())
        part = decode(data["record"])
        nodes = expand(str(data.get("nodes", "")))
    except (OSError, ValueError, KeyError, TypeError, SlurmgpuError) as exc:
        log("warning", f"mirror: dropping unreadable pending part {path.name}: {exc}")
        path.unlink(missing_ok=True)
        return 0
    r = config.reports
    multi = len(nodes) > 1
    rank = nodes.index(node) if node in nodes else 0
    # nodes of one job start one after the other (a read, a write and the settle time apart)
    stagger = (rank % MAX_STAGGER_SLOTS) * (r.mirror_settle_seconds + 0.5) if multi else 0.0
    sleep(stagger + rng.uniform(0.0, r.mirror_jitter_seconds))
    calls_before = bucket.calls
    outcome = mirror_part(
        slurm,
        part,
        multi_node=multi,
        idle_pct=config.thresholds.idle_utilization_pct,
        max_chars=r.mirror_max_chars,
        max_attempts=r.mirror_max_attempts,
        settle_seconds=r.mirror_settle_seconds,
        bucket=bucket,
        sleep=sleep,
        rng=rng,
        log=log,
    )
    calls = bucket.calls - calls_before
    job = part.job_id
    if outcome.status == "done":
        log(
            "info",
            f"job {job}: GPU record of {node} in AdminComment ({outcome.writes} write(s), {calls} call(s))",
        )
    elif outcome.status in ("foreign", "too-large"):
        log("warning", f"job {job}: GPU record of {node} not mirrored: {outcome.detail}")
        _note(config, node, part, f"admincomment-{outcome.status}", outcome.detail + ": left as is", log)
    else:
        age = clock() - float(data.get("created", clock()))
        if age < PENDING_MAX_AGE_SECONDS:
            log(
                "warning",
                f"job {job}: AdminComment not updated yet ({outcome.detail}); the next epilog retries",
            )
            return 0
        log("warning", f"job {job}: giving up mirroring {node}'s GPU record after {age / 86400:.0f} days")
        _note(config, node, part, "admincomment-gave-up", outcome.detail, log)
    path.unlink(missing_ok=True)
    return 1


def _note(
    config: Config, node: str, part: MirrorRecord, kind: str, detail: str, log: Callable[[str, str], None]
) -> None:
    from slurmgpu.store.db import Store

    try:
        store = Store.open(config.path("database", node))
        try:
            store.add_job_note(cluster=part.cluster, job_id=part.job_id, node=node, kind=kind, detail=detail)
        finally:
            store.close()
    except SlurmgpuError as exc:
        log("warning", f"job {part.job_id}: could not store a note ({exc})")


def read_record(slurm: Slurm, job_id: int) -> MirrorRecord | None:
    """The job's mirrored GPU record, None when the AdminComment is empty or another tool's; MirrorFormatError when
    ours but damaged; SlurmError when sacct fails."""
    comment = slurm.admin_comments([job_id]).get(job_id, "")
    if not comment.strip() or not is_ours(comment):
        return None
    return decode(comment)


def main(argv: list[str] | None = None) -> int:
    """The detached helper: `python -m slurmgpu.slurm.admincomment NODE`. Always exits 0."""
    args = sys.argv[1:] if argv is None else argv
    log = HookLog(None, "mirror")
    try:
        node = args[0]
        config = load_config()
        log.path = config.path("log_file", node)
        flush(config, node, log)
    except Exception as exc:  # best effort, detached: log and go
        log("error", f"mirror helper failed: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
