"""Fake `sacct`, `sacctmgr`, `squeue` and `sinfo` for unit tests of the reports and the AdminComment mirror.

Faithful where our code depends on Slurm 22.05's behaviour (tests/cluster checks the real thing):
- the accounting database is a JSON file, changed under an flock (slurmdbd serialises writes);
- `sacctmgr -i modify job where jobid=N set AdminComment=V` lowercases V and turns quotes into backticks, prints
  " Modified jobs..." and exits 0, or prints " Nothing modified" and exits 1 for an unknown job;
- `sacct -X -n -P --delimiter=D -o F1,F2 [-j ids | -S t -E t -a ...]` prints the fields joined by D, times as epoch
  seconds when SLURM_TIME_FORMAT=%s;
- every call is appended to calls.log (time, program, arguments) so tests can count and time them.
A `delay` (seconds) in the database file makes sacctmgr slow, as on a busy slurmdbd (it widens race windows).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCRIPT = r"""#!{python}
import fcntl, json, os, sys, time
DB = {db!r}
prog = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(DB + ".calls", "a") as log:
    log.write(json.dumps([time.time(), prog, args]) + "\n")
lock = open(DB + ".lock", "a")
fcntl.flock(lock, fcntl.LOCK_EX)
with open(DB) as f:
    db = json.load(f)
fcntl.flock(lock, fcntl.LOCK_UN)

def opt(name, default=None):
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default

def fmt_time(v):
    if v is None:
        return "Unknown"
    if os.environ.get("SLURM_TIME_FORMAT") == "%s":
        return str(int(v))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(v))

if prog == "sacctmgr":
    jobid = next(a.split("=", 1)[1] for a in args if a.lower().startswith("jobid="))
    value = next(a.split("=", 1)[1] for a in args if a.lower().startswith("admincomment="))
    time.sleep(db.get("delay", 0.0) * 0.5)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with open(DB) as f:
        db = json.load(f)
    job = db["jobs"].get(jobid)
    if job is None or db.get("fail_writes"):
        fcntl.flock(lock, fcntl.LOCK_UN)
        print(" Nothing modified")
        print("sacctmgr: accounting_storage/slurmdbd: acct_storage_p_modify_job: Request didn't affect anything", file=sys.stderr)
        sys.exit(1)
    job["AdminComment"] = value.lower().replace('"', "`").replace("'", "`")
    tmp = DB + ".tmp"
    with open(tmp, "w") as f:
        json.dump(db, f)
    os.replace(tmp, DB)
    fcntl.flock(lock, fcntl.LOCK_UN)
    time.sleep(db.get("delay", 0.0) * 0.5)
    print(" Modified jobs...")
    print("  " + jobid + " submitted at 2026-11-25T02:30:34")
    sys.exit(0)

if prog == "sacct":
    delim = opt("--delimiter", "|")
    fields = opt("-o").split(",")
    ids = opt("-j")
    jobs = list(db["jobs"].values())
    if ids is not None:
        wanted = set(ids.split(","))
        jobs = [j for j in jobs if str(j["JobIDRaw"]) in wanted]
    else:
        since = time.mktime(time.strptime(opt("-S"), "%Y-%m-%dT%H:%M:%S"))
        until = time.mktime(time.strptime(opt("-E"), "%Y-%m-%dT%H:%M:%S"))
        jobs = [j for j in jobs if (j.get("Start") or j["Submit"]) < until and (j.get("End") or until) >= since]
        if opt("-u"):
            jobs = [j for j in jobs if j["User"] == opt("-u")]
        if opt("-A"):
            jobs = [j for j in jobs if j["Account"] == opt("-A")]
    for j in sorted(jobs, key=lambda j: j["JobIDRaw"]):
        out = []
        for f in fields:
            v = j.get(f, "")
            out.append(fmt_time(v) if f in ("Submit", "Start", "End") else str(v))
        print(delim.join(out))
    sys.exit(0)

if prog == "squeue":
    fmt = opt("-o")
    user = opt("-u")
    for j in db.get("running", []):
        if user and j["user"] != user:
            continue
        print(fmt.replace("%A", str(j["raw"])).replace("%i", j["id"]).replace("%u", j["user"])
              .replace("%a", j["account"]).replace("%P", j["partition"]).replace("%N", j["nodes"])
              .replace("%S", fmt_time(j["start"])))
    sys.exit(0)

if prog == "sinfo":
    fmt = opt("-o")
    for n in db.get("nodes", []):
        print(fmt.replace("%N", n["name"]).replace("%G", n["gres"]).replace("%T", n["state"]))
    sys.exit(0)
sys.exit(2)
"""


class FakeSlurm:
    def __init__(self, root: Path) -> None:
        self.bin = root / "fake-slurm-bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.db = root / "fake-slurmdbd.json"
        self.save({"jobs": {}})
        text = SCRIPT.format(python=sys.executable, db=str(self.db))
        for prog in ("sacct", "sacctmgr", "squeue", "sinfo"):
            path = self.bin / prog
            path.write_text(text)
            path.chmod(0o755)

    def load(self) -> dict[str, Any]:
        return json.loads(self.db.read_text())  # type: ignore[no-any-return]

    def save(self, data: dict[str, Any]) -> None:
        tmp = self.db.with_suffix(".init")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.db)

    def add_job(self, job_id: int, **fields: Any) -> None:
        data = self.load()
        base = {
            "JobIDRaw": job_id,
            "JobID": str(job_id),
            "User": "alice",
            "Account": "ml-team",
            "Partition": "gpu",
            "State": "COMPLETED",
            "Submit": 1000.0,
            "Start": 1010.0,
            "End": 1110.0,
            "ElapsedRaw": 100,
            "NodeList": "gn1",
            "AllocTRES": "billing=1,cpu=1,gres/gpu=2,node=1",
            "AdminComment": "",
            "JobName": "train",
        }
        base.update(fields)
        data["jobs"][str(job_id)] = base
        self.save(data)

    def set(self, key: str, value: Any) -> None:
        data = self.load()
        data[key] = value
        self.save(data)

    def comment(self, job_id: int) -> str:
        return str(self.load()["jobs"][str(job_id)]["AdminComment"])

    def calls(self) -> list[tuple[float, str, list[str]]]:
        path = Path(str(self.db) + ".calls")
        if not path.exists():
            return []
        return [tuple(json.loads(line)) for line in path.read_text().splitlines()]  # type: ignore[misc]
