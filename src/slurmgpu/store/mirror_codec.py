"""A job's GPU record as text for Slurm's AdminComment (pure): versioned, compressed, and surviving sacctmgr.

Slurm 22.05's `sacctmgr modify job ... set AdminComment=` lowercases the whole value and turns quotes into backticks,
so the text is `sg1:` followed by base32 (lowercase, no padding) of zlib-compressed compact JSON; decoding upper-cases
it again. Anything not starting with `sg1:` is another tool's content (for example jobstats' `JS1:`) and is never
decoded or replaced.

The record holds one part per node (each node's epilog writes its own part; see slurm/admincomment.py). Values are
stored at fixed resolutions, so decode(encode(r)) is exact for a record that went through the codec once:
times 0.01 s, energy 0.1 J, utilization 0.01 %, memory 1 MiB; GPU UUIDs are left out. A part is either per GPU
(detail) or, when the record would exceed its size budget, per GPU model (sums); a very large job is collapsed into
one set of sums per model plus the list of nodes that contributed.

JSON layout (version 1; keys are short because the text is stored for every job):
  v: 1, c: cluster, j: raw job id, u: user, i: uid, a: account, p: partition, x: [array job, task, het job, offset]
  m: [GPU model names], s: [usage sources]
  n: {node: {"d": [[minor, model#, memory MiB, start cs, end cs, energy dJ, util mean c%, util max c%,
                    memory peak MiB, memory util c%, source#], ...]}
       | {"g": [GROUP, ...]}}
  z: {"n": [nodes], "g": [GROUP, ...]}   (collapsed)
  GROUP: [model#, gpus, gpu cs, used cs, util-known cs, idle cs, energy dJ, energy-known cs, memory-fraction cs,
          memory-known cs, first start cs, last end cs]
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from slurmgpu.errors import SlurmgpuError
from slurmgpu.store.records import JobGpuUsage, JobMeta, JobRecord
from slurmgpu.store.usage import ModelGroup, UsageSums, merge_groups, model_groups

PREFIX = "sg1:"
MAX_DECOMPRESSED_BYTES = 4 << 20
MIB = 1 << 20


class MirrorFormatError(SlurmgpuError):
    """An AdminComment that starts with our prefix but does not decode."""


class MirrorTooLarge(SlurmgpuError):
    """Even collapsed, the record exceeds its size budget."""


@dataclass(frozen=True)
class NodePart:
    """One node's GPUs of a job: per GPU (`gpus`), or summed per model (`groups`) when made smaller."""

    node: str
    gpus: tuple[JobGpuUsage, ...] = ()
    groups: tuple[ModelGroup, ...] = ()

    @property
    def summarised(self) -> bool:
        return not self.gpus and bool(self.groups)

    def model_groups(self, idle_pct: float) -> tuple[ModelGroup, ...]:
        return self.groups if self.summarised else model_groups(self.gpus, idle_pct)


@dataclass(frozen=True)
class Collapsed:
    nodes: tuple[str, ...]
    groups: tuple[ModelGroup, ...]


@dataclass(frozen=True)
class MirrorRecord:
    cluster: str
    job_id: int
    user: str
    uid: int | None
    account: str
    partition: str
    array_job_id: int | None = None
    array_task_id: int | None = None
    het_job_id: int | None = None
    het_job_offset: int | None = None
    parts: tuple[NodePart, ...] = ()
    collapsed: Collapsed | None = None

    @property
    def nodes(self) -> tuple[str, ...]:
        names = {p.node for p in self.parts}
        if self.collapsed is not None:
            names.update(self.collapsed.nodes)
        return tuple(sorted(names))

    def groups(self, idle_pct: float) -> tuple[ModelGroup, ...]:
        """Usage per GPU model over every node (detail parts summed with `idle_pct`; summaries as written)."""
        groups = [g for p in self.parts for g in p.model_groups(idle_pct)]
        if self.collapsed is not None:
            groups.extend(self.collapsed.groups)
        return merge_groups(groups)

    def last_end_epoch_seconds(self) -> float:
        ends = [g.last_end_epoch_seconds for g in self.groups(0.0)]
        return max(ends, default=0.0)

    def job_record(self) -> JobRecord:
        """The per-GPU rows as a store JobRecord (summarised nodes have none: see `summarised_nodes`)."""
        end = self.last_end_epoch_seconds()
        meta = JobMeta(
            cluster=self.cluster,
            job_id=self.job_id,
            user=self.user,
            uid=self.uid,
            account=self.account,
            partition=self.partition,
            array_job_id=self.array_job_id,
            array_task_id=self.array_task_id,
            het_job_id=self.het_job_id,
            het_job_offset=self.het_job_offset,
            first_seen_epoch_seconds=end,
            last_update_epoch_seconds=end,
        )
        gpus = tuple(g for p in self.parts if not p.summarised for g in p.gpus)
        return JobRecord(meta=meta, gpus=gpus)

    def summarised_nodes(self) -> tuple[str, ...]:
        names = [p.node for p in self.parts if p.summarised]
        if self.collapsed is not None:
            names.extend(self.collapsed.nodes)
        return tuple(sorted(names))


def record_for_node(meta: JobMeta, node: str, gpus: Iterable[JobGpuUsage]) -> MirrorRecord:
    """A record holding one node's part (what one epilog contributes), already at the codec's resolution."""
    record = MirrorRecord(
        cluster=meta.cluster,
        job_id=meta.job_id,
        user=meta.user,
        uid=meta.uid,
        account=meta.account,
        partition=meta.partition,
        array_job_id=meta.array_job_id,
        array_task_id=meta.array_task_id,
        het_job_id=meta.het_job_id,
        het_job_offset=meta.het_job_offset,
        parts=(NodePart(node, tuple(sorted(gpus, key=lambda g: g.minor))),),
    )
    return quantize(record)


def is_ours(text: str) -> bool:
    return text[: len(PREFIX)].lower() == PREFIX


def quantize(record: MirrorRecord) -> MirrorRecord:
    """The record at the codec's resolution (what decode(encode(record)) returns)."""
    return decode(encode(record))


# -- merging and size ------------------------------------------------------------------------------------------


def merge(existing: MirrorRecord | None, part_record: MirrorRecord) -> MirrorRecord:
    """`existing` with the node part of `part_record` added or replaced (re-running an epilog replaces its part).

    A record of another job (another cluster or a reused job id) is replaced. A node already counted in a collapsed
    record stays counted once."""
    (part,) = part_record.parts
    if existing is None or (existing.cluster, existing.job_id) != (part_record.cluster, part_record.job_id):
        return part_record
    if existing.collapsed is not None and part.node in existing.collapsed.nodes:
        return existing
    parts = sorted([p for p in existing.parts if p.node != part.node] + [part], key=lambda p: p.node)
    return replace(existing, parts=tuple(parts))


def contains(record: MirrorRecord, part_record: MirrorRecord) -> bool:
    """Whether `record` holds the node part of `part_record` (as written, or summarised, or collapsed)."""
    if (record.cluster, record.job_id) != (part_record.cluster, part_record.job_id):
        return False
    (part,) = part_record.parts
    if record.collapsed is not None and part.node in record.collapsed.nodes:
        return True
    mine = next((p for p in record.parts if p.node == part.node), None)
    return mine is not None and (mine.summarised or mine == part)


def summarise(part: NodePart, idle_pct: float) -> NodePart:
    return part if part.summarised else NodePart(part.node, (), model_groups(part.gpus, idle_pct))


def fit(record: MirrorRecord, max_chars: int, idle_pct: float) -> tuple[MirrorRecord, str]:
    """The record and its text within `max_chars`: per-GPU parts are summarised (largest first, doubling the number
    each step), then all nodes collapsed. The record returned is the text's (on the codec's resolution).
    MirrorTooLarge if even the collapsed record does not fit."""
    text = encode(record)
    if len(text) <= max_chars:
        return decode(text), text
    order = sorted(range(len(record.parts)), key=lambda i: (-len(record.parts[i].gpus), record.parts[i].node))
    count = 1
    while count <= len(order):
        parts = list(record.parts)
        for i in order[:count]:
            parts[i] = summarise(parts[i], idle_pct)
        smaller = replace(record, parts=tuple(parts))
        text = encode(smaller)
        if len(text) <= max_chars:
            return decode(text), text
        if count == len(order):
            break
        count = min(len(order), count * 2)
    collapsed = replace(
        record,
        parts=(),
        collapsed=Collapsed(record.nodes, record.groups(idle_pct)),
    )
    text = encode(collapsed)
    if len(text) <= max_chars:
        return decode(text), text
    raise MirrorTooLarge(
        f"job {record.job_id}: the GPU record of {len(record.nodes)} nodes needs {len(text)} characters "
        f"even collapsed (limit {max_chars})"
    )


# -- encoding ----------------------------------------------------------------------------------------------------


def _cs(seconds: float) -> int:
    return round(seconds * 100)


def _opt(value: float | None, scale: float) -> int | None:
    return None if value is None else round(value * scale)


def _mib(value: int | None) -> int | None:
    return None if value is None else round(value / MIB)


class _Table:
    """Strings stored once (GPU models, sources), referred to by position."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        if value not in self.index:
            self.index[value] = len(self.items)
            self.items.append(value)
        return self.index[value]


def _group_out(g: ModelGroup, models: _Table) -> list[int]:
    s = g.sums
    return [
        models(g.model),
        s.gpus,
        _cs(s.gpu_seconds),
        _cs(s.used_gpu_seconds),
        _cs(s.util_known_gpu_seconds),
        _cs(s.idle_gpu_seconds),
        round(s.energy_joules * 10),
        _cs(s.energy_known_gpu_seconds),
        _cs(s.memory_fraction_gpu_seconds),
        _cs(s.memory_known_gpu_seconds),
        _cs(g.first_start_epoch_seconds),
        _cs(g.last_end_epoch_seconds),
    ]


def encode(record: MirrorRecord) -> str:
    models, sources = _Table(), _Table()
    nodes: dict[str, Any] = {}
    for p in record.parts:
        if p.summarised:
            nodes[p.node] = {"g": [_group_out(g, models) for g in p.groups]}
        else:
            nodes[p.node] = {
                "d": [
                    [
                        u.minor,
                        -1 if u.model is None else models(u.model),
                        _mib(u.memory_total_bytes),
                        _cs(u.start_epoch_seconds),
                        _cs(u.end_epoch_seconds),
                        _opt(u.energy_joules, 10),
                        _opt(u.utilization_mean_pct, 100),
                        _opt(u.utilization_max_pct, 100),
                        _mib(u.memory_peak_bytes),
                        _opt(u.memory_utilization_mean_pct, 100),
                        sources(u.source),
                    ]
                    for u in p.gpus
                ]
            }
    data: dict[str, Any] = {
        "v": 1,
        "c": record.cluster,
        "j": record.job_id,
        "u": record.user,
        "i": record.uid,
        "a": record.account,
        "p": record.partition,
    }
    ids = [record.array_job_id, record.array_task_id, record.het_job_id, record.het_job_offset]
    if any(i is not None for i in ids):
        data["x"] = ids
    data["n"] = nodes
    if record.collapsed is not None:
        data["z"] = {
            "n": list(record.collapsed.nodes),
            "g": [_group_out(g, models) for g in record.collapsed.groups],
        }
    data["m"] = models.items
    data["s"] = sources.items
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return PREFIX + base64.b32encode(zlib.compress(raw, 9)).decode().rstrip("=").lower()


# -- decoding ----------------------------------------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MirrorFormatError(f"bad {what}: {value!r}")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise MirrorFormatError(f"bad {what}: {value!r}")
    return value


def _list(value: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise MirrorFormatError(f"bad {what}")
    return value


def _ref(table: list[str], index: Any, what: str) -> str:
    i = _int(index, what)
    if not 0 <= i < len(table):
        raise MirrorFormatError(f"bad {what} reference {i}")
    return table[i]


def _group_in(row: Any, models: list[str]) -> ModelGroup:
    r = _list(row, "group", 12)
    v = [_int(x, "group value") for x in r[1:]]
    return ModelGroup(
        model=_ref(models, r[0], "model"),
        sums=UsageSums(
            gpus=v[0],
            gpu_seconds=v[1] / 100,
            used_gpu_seconds=v[2] / 100,
            util_known_gpu_seconds=v[3] / 100,
            idle_gpu_seconds=v[4] / 100,
            energy_joules=v[5] / 10,
            energy_known_gpu_seconds=v[6] / 100,
            memory_fraction_gpu_seconds=v[7] / 100,
            memory_known_gpu_seconds=v[8] / 100,
        ),
        first_start_epoch_seconds=v[9] / 100,
        last_end_epoch_seconds=v[10] / 100,
    )


def _gpu_in(row: Any, node: str, models: list[str], sources: list[str]) -> JobGpuUsage:
    r = _list(row, "GPU row", 11)
    model_i = _int(r[1], "model")
    mem_total, mem_peak = _opt_int(r[2], "memory total"), _opt_int(r[8], "memory peak")
    energy, util, util_max, mem_util = (_opt_int(r[i], "GPU value") for i in (5, 6, 7, 9))
    return JobGpuUsage(
        node=node,
        minor=_int(r[0], "minor"),
        uuid=None,
        model=None if model_i == -1 else _ref(models, model_i, "model"),
        memory_total_bytes=None if mem_total is None else mem_total * MIB,
        start_epoch_seconds=_int(r[3], "start") / 100,
        end_epoch_seconds=_int(r[4], "end") / 100,
        energy_joules=None if energy is None else energy / 10,
        utilization_mean_pct=None if util is None else util / 100,
        utilization_max_pct=None if util_max is None else util_max / 100,
        memory_peak_bytes=None if mem_peak is None else mem_peak * MIB,
        memory_utilization_mean_pct=None if mem_util is None else mem_util / 100,
        source=_ref(sources, r[10], "source"),
    )


def decode(text: str) -> MirrorRecord:
    """The record in an AdminComment of ours; MirrorFormatError when it is ours but damaged."""
    if not is_ours(text):
        raise MirrorFormatError("not a slurmgpu record")
    body = text[len(PREFIX) :].strip().upper()
    try:
        packed = base64.b32decode(body + "=" * (-len(body) % 8))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_DECOMPRESSED_BYTES)
        if inflater.unconsumed_tail:
            raise MirrorFormatError("record too large")
        data = json.loads(raw)
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise MirrorFormatError(f"undecodable record: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise MirrorFormatError(
            f"unknown record version {data.get('v') if isinstance(data, dict) else None!r}"
        )
    models = [_str(m, "model") for m in _list(data.get("m", []), "models")]
    sources = [_str(s, "source") for s in _list(data.get("s", []), "sources")]
    ids = _list(data.get("x", [None, None, None, None]), "array/het ids", 4)
    nodes = data.get("n", {})
    if not isinstance(nodes, dict):
        raise MirrorFormatError("bad node table")
    parts = []
    for node in sorted(nodes):
        entry = nodes[node]
        if isinstance(entry, dict) and "d" in entry:
            rows = _list(entry["d"], "GPU rows")
            parts.append(NodePart(node, tuple(_gpu_in(r, node, models, sources) for r in rows)))
        elif isinstance(entry, dict) and "g" in entry:
            parts.append(NodePart(node, (), tuple(_group_in(g, models) for g in _list(entry["g"], "groups"))))
        else:
            raise MirrorFormatError(f"bad part for node {node!r}")
    collapsed = None
    if "z" in data:
        z = data["z"]
        if not isinstance(z, dict):
            raise MirrorFormatError("bad collapsed part")
        collapsed = Collapsed(
            tuple(_str(n, "node") for n in _list(z.get("n"), "collapsed nodes")),
            tuple(_group_in(g, models) for g in _list(z.get("g"), "collapsed groups")),
        )
    uid = data.get("i")
    return MirrorRecord(
        cluster=_str(data.get("c"), "cluster"),
        job_id=_int(data.get("j"), "job id"),
        user=_str(data.get("u"), "user"),
        uid=_opt_int(uid, "uid"),
        account=_str(data.get("a"), "account"),
        partition=_str(data.get("p"), "partition"),
        array_job_id=_opt_int(ids[0], "array job id"),
        array_task_id=_opt_int(ids[1], "array task id"),
        het_job_id=_opt_int(ids[2], "het job id"),
        het_job_offset=_opt_int(ids[3], "het job offset"),
        parts=tuple(parts),
        collapsed=collapsed,
    )
