"""Classifying XIDs from a 100,000-line kernel log (issue 3: report the time; target well under 0.1 s).

The log mixes ordinary kernel lines with NVRM Xid lines (1 in 50) for 8 GPUs, as dmesg would show them. Measured:
parse every line, map each XID to its GPU by PCI bus id, classify it through the table, and build the check results,
against a plain `splitlines()` pass over the same text in the same run (the floor of any line-based parser).

    /opt/slurmgpu/bin/python bench/xid_bench.py [--lines 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from slurmgpu.config import HealthConfig
from slurmgpu.gpu.xid import parse_xid_lines
from slurmgpu.health.checks import XidEvent, check_xids
from slurmgpu.sim.models import pci_bus_id
from slurmgpu.sim.xid_text import xid_message

CODES = (13, 31, 43, 45, 48, 63, 74, 79, 92, 94, 95, 119)


def make_log(lines: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        stamp = f"[{i * 0.01:12.6f}] "
        if i % 50 == 0:
            out.append(
                stamp + xid_message(pci_bus_id(rng.randrange(8)), rng.choice(CODES), pid=str(1000 + i))
            )
        else:
            out.append(stamp + f"eth0: link up, 100Gbps, full duplex, flow control rx/tx, seq {i}")
    return "\n".join(out) + "\n"


def classify_log(text: str, cfg: HealthConfig) -> int:
    by_bus = {f"0000:{pci_bus_id(s).split(':')[1].lower()}:00": s for s in range(8)}
    events = [XidEvent(code, by_bus.get(bus), bus, line) for bus, code, line in parse_xid_lines(text)]
    return len(check_xids(events, cfg))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    text = make_log(args.lines)
    cfg = HealthConfig()
    results = classify_log(text, cfg)
    assert results == args.lines // 50  # every XID line became exactly one result
    ours, floor = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        classify_log(text, cfg)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        sum(1 for _ in text.splitlines())
        floor.append(time.perf_counter() - t)
    res = {
        "lines": args.lines,
        "xid_lines": results,
        "classify_median_ms": 1000 * statistics.median(ours),
        "splitlines_median_ms": 1000 * statistics.median(floor),
    }
    res["ratio"] = res["classify_median_ms"] / res["splitlines_median_ms"]
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{args.lines} lines, {results} XIDs: classify median {res['classify_median_ms']:.1f} ms "
            f"(splitlines alone {res['splitlines_median_ms']:.1f} ms, {res['ratio']:.1f}x); target well under 100 ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
