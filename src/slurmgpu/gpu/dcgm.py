"""The DCGM gateway: the only module that runs NVIDIA's `dcgmi` command line tool.

DCGM is optional: `Dcgmi.available()` says whether the binary is installed, and nothing else in slurmgpu needs it.
Commands run by absolute path with arguments as a list, a minimal environment and a timeout (a host engine stuck
on a failing GPU can hang `dcgmi`). Two kinds of failure, kept apart on purpose:
- `health()` and `diag()` feed health decisions, so every problem with `dcgmi` itself (missing binary, timeout,
  non-zero exit, output we cannot read) comes back as data: the result's `error` says what went wrong, in one line.
- group and job-statistics commands raise `DcgmError` (one line) when `dcgmi` fails; `parse_stats_job` reports
  unreadable output in the result's `error` field and keeps whatever it could read.

The parse functions are pure and importable on their own. Formats, all read from NVIDIA/DCGM sources
(https://github.com/NVIDIA/DCGM):
- `dcgmi health -c -j`: dcgmi/Health.cpp (`GenerateOutputFromResponse`, `HandleOneEntity`, `AddErrorMessage`,
  `HelperHealthToString`, `HelperSystemToString`) rendered through dcgmi/DcgmiOutput.{h,cpp} (`DcgmiOutputJson`:
  sections under "body", nested nodes under "children", a node's text in "value", continuation lines in
  "overflow", titles in "header").
- `dcgmi diag -r N -j`: dcgmi/Diag.cpp (`HelperJsonBuildOutput` and helpers) with key names from
  nvvs/include/NvvsJsonStrings.h. DCGM 4 writes {"DCGM Diagnostic": {"test_categories": [...]}, "entity_groups",
  "metadata"} with per-entity results; DCGM 3 wrote {"DCGM GPU Diagnostic": {"test_categories": [...]}} with
  "gpu_id" per result. Both are read.
- `dcgmi group -c NAME -a IDS`: dcgmi/Group.cpp (`RunGroupCreate`): 'Successfully created group "NAME" with a group
  ID of N'.
- `dcgmi stats -v -j JOB`: dcgmi/ProcessStats.cpp (`ViewJobStats`, `HelperDisplayJob*`, the STATS_* stencils) and
  dcgmi/CommandOutputController.cpp (`HelperDisplayValue`: blank values print as "Not Specified", "Not Found",
  "Not Supported" or "Insf. Permission"; summaries print "N/A"; a value wider than its column is cut and ends
  in "...").
- Flags: dcgmi/CommandLineParser.cpp (health -g/-c/-j/-s, diag -r/-j, group -c/-a/-d, stats -g/-e/-u/-m(
  --max-keep-age)/-s/-x/-r/-j/-v).
- Exit status: dcgmi/main_dcgmi.cpp returns the dcgmReturn_t, so a failure exits with 256 + the (negative) code,
  e.g. 226 for DCGM_ST_NVVS_ERROR (-30) after a diagnostic that found a fault; dcgm_structs.h lists the codes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Literal

from slurmgpu.errors import InputError, SlurmgpuError

HealthLevel = Literal["pass", "warn", "fail"]
DiagResult = Literal["pass", "warn", "fail", "skip", "not_run"]


class DcgmError(SlurmgpuError):
    """dcgmi is missing, failed, hung or printed something we cannot use."""


# dcgm_structs.h, dcgmReturn_enum: the codes an operator is most likely to meet, for readable errors.
DCGM_RETURN_NAMES = {
    -1: "DCGM_ST_BADPARAM",
    -2: "command line parse error",
    -3: "DCGM_ST_GENERIC_ERROR",
    -5: "DCGM_ST_NOT_CONFIGURED",
    -6: "DCGM_ST_NOT_SUPPORTED",
    -11: "DCGM_ST_TIMEOUT",
    -14: "DCGM_ST_NO_DATA",
    -16: "DCGM_ST_NOT_WATCHED",
    -17: "DCGM_ST_NO_PERMISSION",
    -18: "DCGM_ST_GPU_IS_LOST",
    -21: "DCGM_ST_CONNECTION_NOT_VALID",
    -26: "DCGM_ST_DUPLICATE_KEY",
    -29: "DCGM_ST_REQUIRES_ROOT",
    -30: "DCGM_ST_NVVS_ERROR",
    -39: "DCGM_ST_DIAG_ALREADY_RUNNING",
    -51: "DCGM_ST_NVVS_ISOLATE_ERROR",
}

# A level-3/4 diagnostic runs for tens of minutes to hours; the instance timeout is for quick commands.
DIAG_DEFAULT_TIMEOUT_SECONDS = {1: 300.0, 2: 1200.0, 3: 3600.0, 4: 4 * 3600.0}


# --------------------------------------------------------------------------------------------------------------
# Health: `dcgmi health -c -j`
# --------------------------------------------------------------------------------------------------------------

# Health.cpp, HelperHealthToString.
HEALTH_LEVELS: dict[str, HealthLevel] = {"Healthy": "pass", "Warning": "warn", "Failure": "fail"}
# Health.cpp, HelperSystemToString (NvSwitch and newer systems fall to "Internal error" there).
HEALTH_SYSTEMS = {
    "PCIe system": "pcie",
    "NVLINK system": "nvlink",
    "PMU system": "pmu",
    "MCU system": "mcu",
    "Memory system": "memory",
    "SM system": "sm",
    "InfoROM system": "inforom",
    "Thermal system": "thermal",
    "Power system": "power",
    "Driver": "driver",
    "Internal error": "unknown",
}
_LEVEL_ORDER = {None: 3, "fail": 2, "warn": 1, "pass": 0}


@dataclass(frozen=True)
class DcgmHealthIncident:
    """What DCGM's health watches found in one subsystem of one entity.

    Several incidents of one subsystem arrive from dcgmi already joined with ", " (Health.cpp,
    AppendSystemIncidents), so `message` may hold more than one; `health` is the worst of them."""

    system: str  # pcie, nvlink, pmu, mcu, memory, sm, inforom, thermal, power, driver; else dcgmi's label
    health: HealthLevel | None  # None: dcgmi printed a level we do not know ("Internal error")
    message: str


@dataclass(frozen=True)
class DcgmEntityHealth:
    entity_group: str  # "GPU" for GPUs; DCGM also reports "Switch", "GPU_I", "CPU", ...
    entity_id: int  # the DCGM entity id (for GPUs: DCGM's GPU id, which is the NVML index)
    health: HealthLevel | None
    incidents: tuple[DcgmHealthIncident, ...] = ()


@dataclass(frozen=True)
class DcgmHealth:
    overall: HealthLevel | None  # None when unknown; then `error` says why
    entities: tuple[DcgmEntityHealth, ...] = ()  # only entities with incidents are listed
    error: str | None = None

    @property
    def gpus(self) -> tuple[DcgmEntityHealth, ...]:
        return tuple(e for e in self.entities if e.entity_group == "GPU")

    def gpu(self, gpu_id: int) -> DcgmEntityHealth | None:
        return next((e for e in self.gpus if e.entity_id == gpu_id), None)


def _json_document(text: str) -> Any:
    """The JSON document dcgmi printed; tolerates lines before it (dcgmi prints nothing else in -j mode, but a
    wrapper or a library warning might)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object")
    return json.loads(text[start:])


def _walk(node: Any, *keys: str) -> Any:
    """node[k1][k2]..., or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:160]
    return "no output"


def _system_name(label: str) -> str:
    if label in HEALTH_SYSTEMS:
        return HEALTH_SYSTEMS[label]
    return label.lower().removesuffix(" system").replace(" ", "_")


def parse_health_json(text: str) -> DcgmHealth:
    """Parse `dcgmi health -c -j`. Never raises: unreadable parts are listed in `error`, the rest is kept.

    Invariant (Health.cpp): body["Overall Health"]["value"] is the overall level; every other body section is an
    entity group whose children are entity ids; each entity's children["Errors"]["children"] maps a subsystem
    label to {"value": level, "overflow": [message split at word boundaries into <= 55-character pieces]}."""
    try:
        doc = _json_document(text)
    except ValueError:
        return DcgmHealth(overall=None, error=f"dcgmi health printed no JSON: {_first_line(text)!r}")
    body = doc.get("body") if isinstance(doc, dict) else None
    if not isinstance(body, dict):
        return DcgmHealth(overall=None, error="dcgmi health JSON has no 'body'")
    problems: list[str] = []
    overall_node = body.get("Overall Health")
    overall_text = overall_node.get("value") if isinstance(overall_node, dict) else None
    overall = HEALTH_LEVELS.get(overall_text) if isinstance(overall_text, str) else None
    if overall is None:
        problems.append(f"overall health is {overall_text!r}")
    entities: list[DcgmEntityHealth] = []
    for group_name, group in body.items():
        if group_name == "Overall Health":
            continue
        children = group.get("children") if isinstance(group, dict) else None
        if not isinstance(children, dict):
            problems.append(f"entity group {group_name!r} has no entities")
            continue
        for entity_key, node in children.items():
            if not entity_key.isdigit() or not isinstance(node, dict):
                problems.append(f"bad {group_name} entity {entity_key!r}")
                continue
            level_text = node.get("value")
            level = HEALTH_LEVELS.get(level_text) if isinstance(level_text, str) else None
            if level is None:
                problems.append(f"{group_name} {entity_key} health is {level_text!r}")
            incidents = []
            errors = _walk(node, "children", "Errors", "children")
            if not isinstance(errors, dict):
                problems.append(f"{group_name} {entity_key} lists no subsystems")
                errors = {}
            for label, system_node in errors.items():
                if not isinstance(system_node, dict):
                    problems.append(f"{group_name} {entity_key} {label!r} is not an object")
                    continue
                system_text = system_node.get("value")
                system_level = HEALTH_LEVELS.get(system_text) if isinstance(system_text, str) else None
                if system_level is None:
                    problems.append(f"{group_name} {entity_key} {label} health is {system_text!r}")
                pieces = system_node.get("overflow", [])
                if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
                    problems.append(f"{group_name} {entity_key} {label} has an unreadable message")
                    pieces = []
                incidents.append(
                    DcgmHealthIncident(
                        system=_system_name(label), health=system_level, message=" ".join(pieces)
                    )
                )
            entities.append(
                DcgmEntityHealth(
                    entity_group=group_name,
                    entity_id=int(entity_key),
                    health=level,
                    incidents=tuple(incidents),
                )
            )
    entities.sort(key=lambda e: (e.entity_group, e.entity_id))
    return DcgmHealth(
        overall=overall,
        entities=tuple(entities),
        error="dcgmi health: " + "; ".join(problems) if problems else None,
    )


# --------------------------------------------------------------------------------------------------------------
# Diagnostics: `dcgmi diag -r N -j`
# --------------------------------------------------------------------------------------------------------------

# Diag.cpp, HelperDisplayDiagResult: JSON shows Pass, Skip or Fail (a warning prints as "Fail"; a test that did
# not run has no entry). Older nvvs output used upper case; "Warn" is accepted in case a release shows it.
DIAG_RESULTS: dict[str, DiagResult] = {
    "pass": "pass",
    "fail": "fail",
    "skip": "skip",
    "skipped": "skip",
    "warn": "warn",
    "warning": "warn",
    "not run": "not_run",
}
_DIAG_ORDER: dict[DiagResult, int] = {"fail": 4, "warn": 3, "pass": 2, "skip": 1, "not_run": 0}


@dataclass(frozen=True)
class DcgmDiagGpuResult:
    gpu_id: int
    result: DiagResult
    warnings: tuple[str, ...] = ()
    info: tuple[str, ...] = ()


@dataclass(frozen=True)
class DcgmDiagTest:
    name: str  # as dcgmi names it: "software", "memory", "pcie", ... (DCGM 4); "Denylist", "GPU Memory" (DCGM 3)
    category: str  # "Deployment", "Hardware", "Integration", "Stress"
    result: DiagResult  # the test summary if dcgmi gave one, else the worst GPU result
    # One per GPU of the run, "not_run" where dcgmi listed no result; for a node-wide result (DCGM 3 Deployment
    # tests) only the GPU it names, if any.
    gpus: tuple[DcgmDiagGpuResult, ...] = ()
    warnings: tuple[str, ...] = ()  # not tied to one GPU
    info: tuple[str, ...] = ()


@dataclass(frozen=True)
class DcgmDiag:
    overall: Literal["pass", "fail"] | None  # fail when any test or GPU failed; None when unknown (see error)
    tests: tuple[DcgmDiagTest, ...] = ()
    gpu_ids: tuple[int, ...] = ()
    level: int | None = None
    dcgm_version: str | None = None
    driver_version: str | None = None
    error: str | None = None

    def failed_gpus(self) -> tuple[int, ...]:
        return tuple(
            sorted({g.gpu_id for t in self.tests for g in t.gpus if g.result == "fail"}),
        )


def _diag_result(value: Any) -> DiagResult | None:
    return DIAG_RESULTS.get(value.strip().lower()) if isinstance(value, str) else None


def _texts(value: Any, key: str = "warning") -> tuple[str, ...]:
    """Warnings are objects {"warning": text, "error_id": ..} (DCGM 3 deployment tests say "warnings" inside the
    object); info is a list of strings (DCGM 4) or one string (DCGM 3)."""
    items = value if isinstance(value, list) else [value] if value is not None else []
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            text = item.get(key, item.get(key + "s"))
            if isinstance(text, str):
                out.append(text)
    return tuple(out)


def _result_gpu(result: dict[str, Any]) -> int | None:
    """The GPU a result belongs to: DCGM 4 entity_group/entity_id, DCGM 3 "gpu_id" (a string), nvvs "gpu_ids"."""
    if "entity_id" in result:
        if result.get("entity_group", "GPU") != "GPU":
            return None
        entity = result.get("entity_id")
        return entity if isinstance(entity, int) else None
    for key in ("gpu_id", "gpu_ids"):
        value = result.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def parse_diag_json(text: str) -> DcgmDiag:
    """Parse `dcgmi diag -r N -j` (DCGM 4 or 3 layout). Never raises; problems are listed in `error`."""
    try:
        doc = _json_document(text)
    except ValueError:
        return DcgmDiag(overall=None, error=f"dcgmi diag printed no JSON: {_first_line(text)!r}")
    if not isinstance(doc, dict):
        return DcgmDiag(overall=None, error="dcgmi diag JSON is not an object")
    root_key = next((k for k in ("DCGM Diagnostic", "DCGM GPU Diagnostic") if k in doc), None)
    root = doc.get(root_key) if root_key else None
    # DCGM 4 keeps versions under "metadata"; DCGM 3 put them at the top level (or, in nvvs output, in the root).
    version = _walk(doc, "metadata", "version") or doc.get("version") or _walk(root, "version")
    driver = _walk(doc, "metadata", "Driver Version Detected") or doc.get("Driver Version Detected")
    version = version if isinstance(version, str) else None
    driver = driver if isinstance(driver, str) else None
    if not isinstance(root, dict):
        return DcgmDiag(
            overall=None,
            dcgm_version=version,
            driver_version=driver,
            error="dcgmi diag JSON has no 'DCGM Diagnostic' section",
        )
    if isinstance(root.get("runtime_error"), str):  # Diag.cpp, HelperDisplayFailureMessage
        return DcgmDiag(
            overall=None,
            dcgm_version=version,
            driver_version=driver,
            error="dcgmi diag: " + " ".join(root["runtime_error"].split())[:300],
        )
    problems: list[str] = []
    gpu_ids: set[int] = set()
    for group in doc.get("entity_groups", []) if isinstance(doc.get("entity_groups"), list) else []:
        if isinstance(group, dict) and group.get("entity_group") == "GPU":
            for entity in group.get("entities", []):
                if isinstance(entity, dict) and isinstance(entity.get("entity_id"), int):
                    gpu_ids.add(entity["entity_id"])
    raw_tests: list[tuple[str, dict[str, Any]]] = []
    categories = root.get("test_categories")
    if not isinstance(categories, list):
        problems.append("no test_categories")
        categories = []
    for category in categories:
        if not isinstance(category, dict) or not isinstance(category.get("tests"), list):
            problems.append("a test category is unreadable")
            continue
        for test in category["tests"]:
            if test is None:  # jsoncpp fills skipped array slots with null
                continue
            if not isinstance(test, dict) or not isinstance(test.get("name"), str):
                problems.append("a test entry is unreadable")
                continue
            raw_tests.append((str(category.get("category", "")), test))
            for result in test.get("results", []) or []:
                if isinstance(result, dict) and (gpu := _result_gpu(result)) is not None:
                    gpu_ids.add(gpu)
    tests = []
    for category_name, test in raw_tests:
        by_gpu: dict[int, DcgmDiagGpuResult] = {}
        warnings: list[str] = []
        info: list[str] = []
        test_level: DiagResult | None = None
        all_gpus_result = False
        named: list[DcgmDiagGpuResult] = []
        # DCGM 3 (Diag.cpp HelperJsonAddBasicTests) gives a Deployment test one result for the whole node, with
        # the GPU of its first error, if any, in "gpu_id".
        node_wide = root_key == "DCGM GPU Diagnostic" and category_name == "Deployment"
        results = test.get("results", [])
        for result in results if isinstance(results, list) else []:
            if not isinstance(result, dict):
                continue
            status = _diag_result(result.get("status"))
            if status is None:
                problems.append(f"{test['name']}: unknown status {result.get('status')!r}")
                status = "fail"  # an unreadable verdict is not a pass
            gpu = _result_gpu(result)
            entry_warnings = _texts(result.get("warnings"))
            entry_info = _texts(result.get("info"), key="info")
            if gpu is None or node_wide:  # one result for all GPUs, or a non-GPU entity (a CPU)
                all_gpus_result = all_gpus_result or node_wide or result.get("entity_group") in (None, "GPU")
                test_level = _worse(test_level, status)
                warnings.extend(entry_warnings)
                info.extend(entry_info)
                if gpu is not None:
                    named.append(DcgmDiagGpuResult(gpu, status, entry_warnings, entry_info))
            else:
                by_gpu[gpu] = DcgmDiagGpuResult(gpu, status, entry_warnings, entry_info)
        summary = test.get("test_summary")
        if isinstance(summary, dict):
            status = _diag_result(summary.get("status"))
            if status is None:
                problems.append(f"{test['name']}: unknown summary status {summary.get('status')!r}")
                status = "fail"
            test_level = status
            warnings.extend(w for w in _texts(summary.get("warnings")) if w not in warnings)
            info.extend(i for i in _texts(summary.get("info"), key="info") if i not in info)
        # A test with one result for all GPUs (DCGM 3 deployment tests) has no per-GPU breakdown; otherwise every
        # GPU of the run is listed, "not_run" where dcgmi printed no result for it (Diag.cpp skips NOT_RUN).
        gpus = (
            tuple(named)
            if all_gpus_result
            else tuple(by_gpu.get(g, DcgmDiagGpuResult(g, "not_run")) for g in sorted(gpu_ids))
        )
        if test_level is None:
            test_level = "not_run"
            for g in gpus:
                test_level = _worse(test_level, g.result)
        tests.append(
            DcgmDiagTest(
                name=test["name"],
                category=category_name,
                result=test_level,
                gpus=gpus,
                warnings=tuple(warnings),
                info=tuple(info),
            )
        )
    if not tests and not problems:
        problems.append("no tests in the output")
    failed = any(t.result == "fail" or any(g.result == "fail" for g in t.gpus) for t in tests)
    overall: Literal["pass", "fail"] | None = "fail" if failed else ("pass" if tests else None)
    return DcgmDiag(
        overall=overall,
        tests=tuple(tests),
        gpu_ids=tuple(sorted(gpu_ids)),
        dcgm_version=version,
        driver_version=driver,
        error="dcgmi diag: " + "; ".join(problems) if problems else None,
    )


def _worse(a: DiagResult | None, b: DiagResult) -> DiagResult:
    return b if a is None or _DIAG_ORDER[b] > _DIAG_ORDER[a] else a


# --------------------------------------------------------------------------------------------------------------
# Groups: `dcgmi group -c NAME -a IDS`
# --------------------------------------------------------------------------------------------------------------

_GROUP_CREATED = re.compile(r'^Successfully created group "(.*)" with a group ID of (\d+)\s*$', re.MULTILINE)


def parse_group_create(text: str) -> int:
    """The new group id from `dcgmi group -c` (Group.cpp, RunGroupCreate); the name may itself contain quotes."""
    match = _GROUP_CREATED.search(text)
    if match is None:
        raise DcgmError(f"dcgmi group -c printed no group id: {_first_line(text)!r}")
    return int(match.group(2))


# --------------------------------------------------------------------------------------------------------------
# Job statistics: `dcgmi stats -v -j JOB`
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DcgmProcessUtilization:
    """A process DCGM saw on the GPU during the job (ProcessStats.cpp, HelperDisplayJobProcessUtilization)."""

    pid: int
    kind: Literal["compute", "graphics"]
    sm_utilization_avg_pct: int | None  # "Not Found" -> None
    memory_utilization_avg_pct: int | None


@dataclass(frozen=True)
class DcgmGpuJobStats:
    """One "GPU ID: N" section of `dcgmi stats -v -j JOB`. None = dcgmi printed Not Supported / Not Specified /
    Not Found / Insf. Permission / N/A, or a value too wide for its column (cut, ending in "...")."""

    gpu_id: int
    start_time_epoch_seconds: float | None  # dcgmi prints ctime() in local time, to the second
    end_time_epoch_seconds: float | None  # None while "Still Running"
    execution_seconds: float | None  # dcgmi's own difference, rounded down to 0.01 s
    process_count: int | None
    energy_joules: int | None  # DCGM's energy counter delta, rounded down to a joule
    power_avg_watts: float | None
    power_max_watts: float | None
    power_min_watts: float | None
    memory_max_bytes: int | None
    sm_clock_avg_mhz: int | None
    sm_clock_max_mhz: int | None
    sm_clock_min_mhz: int | None
    memory_clock_avg_mhz: int | None
    memory_clock_max_mhz: int | None
    memory_clock_min_mhz: int | None
    sm_utilization_avg_pct: int | None
    sm_utilization_max_pct: int | None
    sm_utilization_min_pct: int | None
    memory_utilization_avg_pct: int | None
    memory_utilization_max_pct: int | None
    memory_utilization_min_pct: int | None
    pcie_rx_avg_megabytes: int | None  # dcgmi divides bytes by 10^6 and rounds down
    pcie_rx_max_megabytes: int | None
    pcie_rx_min_megabytes: int | None
    pcie_tx_avg_megabytes: int | None
    pcie_tx_max_megabytes: int | None
    pcie_tx_min_megabytes: int | None
    ecc_single_bit_errors: int | None
    ecc_double_bit_errors: int | None
    pcie_replay_warnings: int | None
    xid_errors: int | None  # "Critical XID Errors"
    xid_offsets_seconds: tuple[int, ...] = ()  # when each critical XID happened, seconds after the job start
    processes: tuple[DcgmProcessUtilization, ...] = ()
    overall_health: HealthLevel | None = None
    health_incidents: tuple[
        tuple[str, HealthLevel | None], ...
    ] = ()  # (system, level) as in DcgmHealthIncident


@dataclass(frozen=True)
class DcgmJobStats:
    """`dcgmi stats -v -j JOB`. The slowdown percentages are job-wide: dcgmi prints the job summary's numbers in
    every GPU section (ProcessStats.cpp passes &jobInfo.summary to HelperDisplayJobViolationStats)."""

    job: str | None
    gpus: tuple[DcgmGpuJobStats, ...] = ()
    slowdown_power_pct: float | None = None  # share of the job's run time at reduced clocks, per cause
    slowdown_thermal_pct: float | None = None
    slowdown_reliability_pct: float | None = None
    slowdown_board_limit_pct: float | None = None
    slowdown_low_utilization_pct: float | None = None
    slowdown_sync_boost_pct: float | None = None
    error: str | None = None

    def gpu(self, gpu_id: int) -> DcgmGpuJobStats | None:
        return next((g for g in self.gpus if g.gpu_id == gpu_id), None)


# CommandOutputController.cpp HelperDisplayValue and ProcessStats.cpp helpers: the words dcgmi prints for a value
# it does not have. Anything else that is not a number is unexpected.
STATS_BLANKS = frozenset(
    {
        "Not Specified",
        "Not Found",
        "Not Supported",
        "Insf. Permission",
        "Unknown",
        "N/A",
        "Has Not Started",
        "Has not started",
        "Still Running",
        "<<<NULL>>>",
    }
)
_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_CTIME = re.compile(r"^(\w{3}) (\w{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) (\d{4})$")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}
_HMS = re.compile(r"^(\d+):(\d+):(\d+)$")
_JOB_LINE = re.compile(r"^Successfully retrieved statistics for job: (.*)\.\s*$")
_SECTIONS = (
    ("Execution Stats", "execution"),
    ("Performance Stats", "performance"),
    ("Event Stats", "events"),
    ("Slowdown Stats", "slowdown"),
    ("Compute Process Utilization", "compute"),
    ("Graphics Process Utilization", "graphics"),
    ("Overall Health", "health"),
)
# ProcessStats.cpp, HelperHealthSystemToString (the job-stats spelling differs from `dcgmi health`).
STATS_HEALTH_SYSTEMS = {
    "PCIE Health": "pcie",
    "NVLink Health": "nvlink",
    "PMU Health": "pmu",
    "MCU Health": "mcu",
    "Mem Health": "memory",
    "SM Health": "sm",
    "InfoRom Health": "inforom",
    "Thermal Health": "thermal",
    "Power Health": "power",
    "Driver Health": "driver",
}
_SLOWDOWN_ROWS = {
    "Due to - Power (%)": "slowdown_power_pct",
    "- Thermal (%)": "slowdown_thermal_pct",
    "- Reliability (%)": "slowdown_reliability_pct",
    "- Board Limit (%)": "slowdown_board_limit_pct",
    "- Low Utilization (%)": "slowdown_low_utilization_pct",
    "- Sync Boost (%)": "slowdown_sync_boost_pct",
}
_SUMMARY_ROWS = {
    "Power Usage (Watts)": ("power", "watts", float),
    "SM Clock (MHz)": ("sm_clock", "mhz", int),
    "Memory Clock (MHz)": ("memory_clock", "mhz", int),
    "SM Utilization (%)": ("sm_utilization", "pct", int),
    "Memory Utilization (%)": ("memory_utilization", "pct", int),
    "PCIe Rx Bandwidth (megabytes)": ("pcie_rx", "megabytes", int),
    "PCIe Tx Bandwidth (megabytes)": ("pcie_tx", "megabytes", int),
}
_INT_ROWS = {
    "No. of Processes": "process_count",
    "Energy Consumed (Joules)": "energy_joules",
    "Max GPU Memory Used (bytes)": "memory_max_bytes",
    "Single Bit ECC Errors": "ecc_single_bit_errors",
    "Double Bit ECC Errors": "ecc_double_bit_errors",
    "PCIe Replay Warnings": "pcie_replay_warnings",
    "Critical XID Errors": "xid_errors",
}


class _Values:
    """Collects one section's problems while converting dcgmi's cells."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def _blank(self, name: str, cell: str) -> None:
        if cell not in STATS_BLANKS and not cell.endswith("..."):
            self.problems.append(f"{name}: unexpected value {cell[:40]!r}")

    def integer(self, name: str, cell: str) -> int | None:
        if _INT.match(cell):
            return int(cell)
        self._blank(name, cell)
        return None

    def real(self, name: str, cell: str) -> float | None:
        if _FLOAT.match(cell):
            return float(cell)
        self._blank(name, cell)
        return None

    def timestamp(self, name: str, cell: str) -> float | None:
        match = _CTIME.match(cell)
        if match and match.group(2) in _MONTHS:
            _, month, day, hour, minute, second, year = match.groups()
            fields = (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), 0, 0, -1)
            return float(time.mktime(fields))
        self._blank(name, cell)
        return None

    def summary(self, name: str, cell: str, kind: type) -> tuple[Any, Any, Any]:
        """'Avg: a, Max: b, Min: c' (ProcessStats.cpp, HelperFormatStat*Summary); a cut cell loses its tail."""
        found: dict[str, Any] = {}
        for piece in cell.split(", "):
            key, sep, value = piece.partition(": ")
            if not sep or key not in ("Avg", "Max", "Min"):
                if not piece.endswith("..."):
                    self.problems.append(f"{name}: unexpected value {cell[:40]!r}")
                continue
            found[key] = self.integer(name, value) if kind is int else self.real(name, value)
        return found.get("Avg"), found.get("Max"), found.get("Min")


def _new_gpu(gpu_id: int) -> dict[str, Any]:
    fields: dict[str, Any] = {f.name: None for f in dataclass_fields(DcgmGpuJobStats)}
    fields.update(gpu_id=gpu_id, xid_offsets_seconds=[], processes=[], health_incidents=[], _health_row=False)
    return fields


def _freeze_gpu(fields: dict[str, Any]) -> DcgmGpuJobStats:
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}
    for name in ("xid_offsets_seconds", "processes", "health_incidents"):
        fields[name] = tuple(fields[name])
    return DcgmGpuJobStats(**fields)


def parse_stats_job(text: str) -> DcgmJobStats:
    """Parse `dcgmi stats -v -j JOB` (the per-GPU text tables of ProcessStats.cpp). Never raises.

    Invariants: a table row is '| name | value |' (two fixed-width cells, ProcessStats.cpp STATS_DATA); a section
    starts with a '+-----  <title>  ---' rule; a GPU starts with the header row '| GPU ID: N |'. Row names are
    unique within their section except the process rows, which follow their 'PID' row."""
    values = _Values()
    job: str | None = None
    gpus: list[dict[str, Any]] = []
    job_wide: dict[str, float | None] = {}
    current: dict[str, Any] | None = None
    section = ""
    saw_summary = False
    unknown_lines = 0
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        match = _JOB_LINE.match(line)
        if match:
            job = match.group(1)
            continue
        if line.startswith(("+", "|-")):
            section = next((key for title, key in _SECTIONS if title in line), section)
            continue
        cells = line.split("|")
        if len(cells) == 3 and cells[0] == "" and cells[2] == "":
            title = cells[1].strip()
            gpu_match = re.fullmatch(r"GPU ID: (\d+)", title)
            if gpu_match:
                current = _new_gpu(int(gpu_match.group(1)))
                gpus.append(current)
                section = ""
            elif title == "Summary":
                saw_summary = True
                current = None
            else:
                unknown_lines += 1
            continue
        if len(cells) != 4 or cells[0] != "" or cells[3] != "":
            unknown_lines += 1
            continue
        if current is None:
            continue  # the non-verbose summary block: not per GPU, not read
        name, cell = cells[1].strip(), cells[2].strip()
        _read_row(values, current, job_wide, section, name, cell)
    problems = values.problems
    incomplete = [str(g["gpu_id"]) for g in gpus if g["overall_health"] is None and not g["_health_row"]]
    if incomplete:  # every section ends with the Overall Health row; output cut short never reaches it
        problems.insert(0, f"GPU section(s) {', '.join(incomplete)} cut short")
    if unknown_lines:
        problems.insert(0, f"{unknown_lines} unreadable line(s)")
    if not gpus:
        first = _first_line(text)
        reason = "a summary without per-GPU sections" if saw_summary else f"no GPU sections: {first!r}"
        problems.insert(0, reason)
    elif job is None:
        problems.insert(0, "no 'Successfully retrieved statistics' line")
    return DcgmJobStats(
        job=job,
        gpus=tuple(_freeze_gpu(g) for g in gpus),
        slowdown_power_pct=job_wide.get("slowdown_power_pct"),
        slowdown_thermal_pct=job_wide.get("slowdown_thermal_pct"),
        slowdown_reliability_pct=job_wide.get("slowdown_reliability_pct"),
        slowdown_board_limit_pct=job_wide.get("slowdown_board_limit_pct"),
        slowdown_low_utilization_pct=job_wide.get("slowdown_low_utilization_pct"),
        slowdown_sync_boost_pct=job_wide.get("slowdown_sync_boost_pct"),
        error="dcgmi stats: " + "; ".join(problems[:5]) if problems else None,
    )


def _read_row(
    values: _Values,
    gpu: dict[str, Any],
    job_wide: dict[str, float | None],
    section: str,
    name: str,
    cell: str,
) -> None:
    if section == "execution":
        if name == "Start Time":
            gpu["start_time_epoch_seconds"] = values.timestamp(name, cell)
        elif name == "End Time":
            gpu["end_time_epoch_seconds"] = values.timestamp(name, cell)
        elif name == "Total Execution Time (sec)":
            gpu["execution_seconds"] = values.real(name, cell)
        elif name in _INT_ROWS:
            gpu[_INT_ROWS[name]] = values.integer(name, cell)
        else:
            values.problems.append(f"unknown row {name!r}")
    elif section in ("performance", "events"):
        if name in _SUMMARY_ROWS:
            stem, unit, kind = _SUMMARY_ROWS[name]
            avg, top, low = values.summary(name, cell, kind)
            gpu[f"{stem}_avg_{unit}"], gpu[f"{stem}_max_{unit}"], gpu[f"{stem}_min_{unit}"] = avg, top, low
        elif name in _INT_ROWS:
            gpu[_INT_ROWS[name]] = values.integer(name, cell)
        elif name in ("XID (Hr:Min:Sec since start)", ""):
            # HelperFormatTotalTime prints hours, then *total* minutes (not minutes past the hour), then seconds.
            hms = _HMS.match(cell)
            if hms:
                gpu["xid_offsets_seconds"].append(int(hms.group(2)) * 60 + int(hms.group(3)))
            else:
                values.problems.append(f"XID time {cell[:20]!r}")
        elif name != "Clocks and PCIe Performance":
            values.problems.append(f"unknown row {name!r}")
    elif section == "slowdown":
        if name in _SLOWDOWN_ROWS:
            job_wide.setdefault(_SLOWDOWN_ROWS[name], values.real(name, cell))
        else:
            values.problems.append(f"unknown row {name!r}")
    elif section in ("compute", "graphics"):
        processes: list[DcgmProcessUtilization] = gpu["processes"]
        if name == "PID":
            pid = values.integer(name, cell)
            if pid is not None:
                process_kind: Literal["compute", "graphics"] = (
                    "compute" if section == "compute" else "graphics"
                )
                processes.append(DcgmProcessUtilization(pid, process_kind, None, None))
        elif processes and name == "Avg SM Utilization (%)":
            processes[-1] = replace(processes[-1], sm_utilization_avg_pct=values.integer(name, cell))
        elif processes and name == "Avg Memory Utilization (%)":
            processes[-1] = replace(processes[-1], memory_utilization_avg_pct=values.integer(name, cell))
        else:
            values.problems.append(f"unknown row {name!r}")
    elif section == "health":
        level = HEALTH_LEVELS.get(cell)
        if level is None:
            values.problems.append(f"{name}: health {cell[:20]!r}")
        if name == "Overall Health":
            gpu["overall_health"] = level
            gpu["_health_row"] = True
        else:
            gpu["health_incidents"].append((STATS_HEALTH_SYSTEMS.get(name, name), level))
    else:
        values.problems.append(f"row {name!r} outside any section")


# --------------------------------------------------------------------------------------------------------------
# The command runner
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str


class Dcgmi:
    """Runs `dcgmi` (absolute path, list arguments, minimal environment, timeout) and parses what it prints."""

    def __init__(self, path: Path = Path("/usr/bin/dcgmi"), timeout_seconds: float = 30.0) -> None:
        if not path.is_absolute():
            raise InputError(f"the dcgmi path must be absolute, not {str(path)!r}")
        self.path = path
        self.timeout = timeout_seconds

    def available(self) -> bool:
        """The binary exists and is executable (DCGM is optional; callers skip DCGM features when False)."""
        return self.path.is_file() and os.access(self.path, os.X_OK)

    # -- health and diagnostics: problems are data ----------------------------------------------------------

    def health(self, group: int | None = None) -> DcgmHealth:
        """`dcgmi health -c -j [-g GROUP]`: what the health watches found (they must be set first, see
        `health_watch`). Exit status is 0 whatever the verdict; a non-zero exit means dcgmi itself failed."""
        args = ["health", *_group_args(group), "-c", "-j"]
        try:
            run = self._run(args, self.timeout)
        except DcgmError as exc:
            return DcgmHealth(overall=None, error=str(exc))
        if run.returncode != 0:
            return DcgmHealth(overall=None, error=_failure_text(args, run))
        return parse_health_json(run.stdout)

    def diag(self, level: int, *, timeout_seconds: float | None = None) -> DcgmDiag:
        """`dcgmi diag -r LEVEL -j` (1 quick .. 4 long). A diagnostic that finds a fault exits non-zero (226,
        DCGM_ST_NVVS_ERROR) and still prints its JSON, which is then parsed."""
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 4:
            raise InputError(f"the DCGM diagnostic level must be 1, 2, 3 or 4, not {level!r}")
        limit = timeout_seconds or max(self.timeout, DIAG_DEFAULT_TIMEOUT_SECONDS[level])
        args = ["diag", "-r", str(level), "-j"]
        try:
            run = self._run(args, limit)
        except DcgmError as exc:
            return DcgmDiag(overall=None, level=level, error=str(exc))
        result = replace(parse_diag_json(run.stdout), level=level)
        if run.returncode != 0 and not result.tests:
            # a JSON runtime_error explains itself; otherwise say how dcgmi ended and what it printed
            error = result.error if result.error and "{" in run.stdout else _failure_text(args, run)
            return replace(result, overall=None, error=error)
        return result

    # -- groups and job statistics: failures raise DcgmError ------------------------------------------------

    def health_watch(self, group: int | None = None, systems: str = "a") -> None:
        """`dcgmi health [-g GROUP] -s SYSTEMS` (a = all; p, m, i, t, n combine): start the health watches that
        `health` reports on."""
        if not systems or not set(systems) <= set("apmitn"):
            raise InputError(f"bad DCGM health watch systems {systems!r}: a, or letters from p m i t n")
        self._checked(["health", *_group_args(group), "-s", systems])

    def group_create(self, name: str, gpu_ids: list[int]) -> int:
        """`dcgmi group -c NAME -a 0,1`: a new GPU group; returns its id."""
        if not name or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise InputError(f"bad DCGM group name {name!r}: letters, digits, '_', '.', '-' (at most 64)")
        if not gpu_ids or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpu_ids):
            raise InputError(f"a DCGM group needs GPU ids (non-negative integers), not {gpu_ids!r}")
        out = self._checked(["group", "-c", name, "-a", ",".join(str(g) for g in gpu_ids)])
        return parse_group_create(out)

    def group_delete(self, group: int) -> None:
        """`dcgmi group -d GROUP`."""
        self._checked(["group", "-d", str(_group_id(group))])

    def stats_watch(self, group: int, max_keep_age_seconds: int) -> None:
        """`dcgmi stats -g GROUP -e --max-keep-age S`: record process and job statistics on the group's GPUs;
        DCGM keeps samples for S seconds, which must outlast the longest job."""
        if isinstance(max_keep_age_seconds, bool) or max_keep_age_seconds <= 0:
            raise InputError(
                f"max keep age must be a positive number of seconds, not {max_keep_age_seconds!r}"
            )
        self._checked(
            ["stats", "-g", str(_group_id(group)), "-e", "--max-keep-age", str(max_keep_age_seconds)]
        )

    def stats_start(self, group: int, job: str) -> None:
        """`dcgmi stats -g GROUP -s JOB`: start recording statistics for a job on the group's GPUs."""
        self._checked(["stats", "-g", str(_group_id(group)), "-s", _job_id(job)])

    def stats_stop(self, job: str) -> None:
        """`dcgmi stats -x JOB`."""
        self._checked(["stats", "-x", _job_id(job)])

    def stats_remove(self, job: str) -> None:
        """`dcgmi stats -r JOB`: forget the job (its id can then be used again)."""
        self._checked(["stats", "-r", _job_id(job)])

    def stats_job(self, job: str) -> DcgmJobStats:
        """`dcgmi stats -v -j JOB`: per-GPU statistics of a job (while it runs or after `stats_stop`)."""
        return parse_stats_job(self._checked(["stats", "-v", "-j", _job_id(job)]))

    # -- internals ------------------------------------------------------------------------------------------

    def _checked(self, args: list[str]) -> str:
        run = self._run(args, self.timeout)
        if run.returncode != 0:
            raise DcgmError(_failure_text(args, run))
        return run.stdout

    def _run(self, args: list[str], timeout: float) -> _Run:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
        if "TZ" in os.environ:  # dcgmi prints job start/end in local time; parse them in the same zone
            env["TZ"] = os.environ["TZ"]
        try:
            proc = subprocess.Popen(
                [str(self.path), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=env,
                start_new_session=True,  # so a timeout can end dcgmi and anything it started
            )
        except FileNotFoundError:
            raise DcgmError(f"dcgmi not found at {self.path} (is DCGM installed?)") from None
        except OSError as exc:
            raise DcgmError(f"cannot run {self.path}: {exc.strerror or exc}") from None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise DcgmError(f"dcgmi {args[0]} did not answer within {timeout:g} s") from None
        return _Run(proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):  # a grandchild escaped the group: give up on it
        proc.communicate(timeout=5)


def _failure_text(args: list[str], run: _Run) -> str:
    """One line: which command, the exit status with DCGM's name for it, and dcgmi's own first error line.
    dcgmi prints most errors on stdout, command-line errors on stderr."""
    code = run.returncode - 256 if run.returncode > 127 else run.returncode
    name = DCGM_RETURN_NAMES.get(code)
    status = f"exit {run.returncode}" + (f", {name}" if name else "")
    lines = [ln.strip() for ln in (run.stdout + "\n" + run.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error")]
    detail = "; ".join(errors[:2]) if errors else (lines[0] if lines else "no output")
    return f"dcgmi {' '.join(args[:3])} failed ({status}): {detail[:240]}"


def _group_args(group: int | None) -> list[str]:
    return [] if group is None else ["-g", str(_group_id(group))]


def _group_id(group: int) -> int:
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise InputError(f"a DCGM group id is a non-negative integer, not {group!r}")
    return group


def _job_id(job: str) -> str:
    # ProcessStats.cpp refuses ids over 64 characters; keep to characters that survive every shell and log.
    if not re.fullmatch(r"[A-Za-z0-9_.:+-]{1,64}", job):
        raise InputError(f"bad DCGM job id {job!r}: up to 64 of letters, digits, '_', '.', ':', '+', '-'")
    return job
