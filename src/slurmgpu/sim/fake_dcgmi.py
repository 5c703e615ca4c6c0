"""A fake `dcgmi` for tests and demos: prints what NVIDIA's dcgmi prints, from a JSON scenario.

Run it as `python -m slurmgpu.sim.fake_dcgmi ARGS...` (tests install a two-line wrapper script as "dcgmi"). The
scenario file is named by the environment variable SLURMGPU_FAKE_DCGMI; state that dcgmi keeps in its host engine
(groups, health watches, recorded jobs) lives next to it in `<scenario>.state`, under an flock, so separate
invocations see one host engine and `group -c` hands out increasing ids (2, 3, ...: DCGM's own groups 0 and 1
are DCGM_ALL_SUPPORTED_GPUS and DCGM_ALL_SUPPORTED_NVSWITCHES, as `dcgmi group -l` shows in NVIDIA/DCGM#93).

Where each format comes from (NVIDIA/DCGM on GitHub; the same sources slurmgpu.gpu.dcgm cites):
- JSON output: dcgmi builds a Json::Value and prints `toStyledString()`, which jsoncpp >= 1.9 writes with
  StreamWriterBuilder defaults (src/lib_json/json_writer.cpp, BuiltStyledStreamWriter): tab indentation,
  `"key" : value`, members sorted bytewise, every non-empty array and object opened on its own line, a newline at
  the end. `_jsoncpp_styled` ports it; it reproduces byte for byte the DCGM 4.2.3 `dcgmi diag -r 1 -j` document
  quoted in a public test fixture (apart from the space jsoncpp leaves after " :" before a line break, which that
  copy had lost) and the tab layout of the "real output" in DCGM's own nvvs JSON tests.
- `health -c [-j]`: dcgmi/Health.cpp (GenerateOutputFromResponse, HandleOneEntity, AppendSystemIncidents,
  AddErrorMessage, HelperHealthToString, HelperSystemToString) through dcgmi/DcgmiOutput.{h,cpp}
  (DcgmiOutputJson; DcgmiOutputTree(28, 60) for the table); row layout checked against dcgmi/tests/HealthTests.cpp.
  Incident texts default to DCGM's own messages (dcgmlib/dcgm_errors.h, DCGM_FR_*_MSG).
- `diag -r N -j`: dcgmi/Diag.cpp of DCGM 4 (HelperJsonBuildOutput, HelperJsonAddResult, HelperJsonAddTestSummary,
  HelperJsonAddEntities, HelperJsonAddMetadata, GetFailureResult) with keys from nvvs/include/NvvsJsonStrings.h
  and plugin names/categories from nvvs/include/PluginStrings.h. A warning is written as "Fail" in JSON
  (HelperDisplayDiagResult without DDR_DISPLAY_WARN); a test that did not run has no result entry.
- `group -c/-a/-d`: dcgmi/Group.cpp. `stats ...`: dcgmi/ProcessStats.cpp (stencils STATS_*, ViewJobStats,
  HelperDisplayJob*, HelperFormat*) and dcgmi/CommandOutputController.cpp (ReplaceTag pads or cuts a value to its
  tag's width, a cut value ending in "..."; HelperDisplayValue's words for blank values). The table layout
  matches real output quoted in NVIDIA/DCGM#93 and chauhang/uber-prof training-job/README.md.
- Flags: dcgmi/CommandLineParser.cpp. Messages and exit status on failure: Command.cpp, the files above, and
  errorString() (dcgmlib/src/dcgm_errors.cpp); dcgmi/main_dcgmi.cpp exits with the dcgmReturn_t, so -30
  (DCGM_ST_NVVS_ERROR) becomes 226.

Scenario schema (every key optional):
{
  "gpus": [0, 1],                   # DCGM GPU ids present (default [0])
  "dcgm_version": "4.2.3", "driver_version": "580.82.09",
  "device_id": "2330",              # PCI device id shown by diag (default "2330", an H100 SXM)
  "serial_numbers": {"0": "1652823054712"},
  "broken": {                       # make dcgmi misbehave
    "mode": "garbage" | "truncated" | "exit" | "hostengine_down" | "hang",
    "commands": ["health", "diag", "group", "stats"],   # default: all
    "exit_code": 1, "output": "text for mode exit",     # mode exit (defaults 255 and a generic error line)
    "sleep_seconds": 3600                               # mode hang: sleep, then answer normally
  },
  "health": {
    "watches": true,                # false: `health -c` fails until `health -s` set watches for the group
    "incidents": [{"gpu": 0, "system": "memory", "health": "fail", "message": "..."}]
                                    # system: pcie nvlink pmu mcu memory sm inforom thermal power driver;
                                    # health: warn | fail; message defaults to DCGM's text for the system
  },
  "diag": {
    "tests": [                      # default: the plugins of the level, all passing
      {"name": "memory", "category": "Hardware", "level": 2,
       "gpus": {"1": {"status": "fail", "warnings": ["text" or {"warning": .., "error_id": ..,
                                                         "error_category": .., "error_severity": ..}],
                      "info": ["text"]}},      # status: pass | fail | warn | skip | not_run (default pass)
       "warnings": [], "info": []}             # not tied to a GPU (the test summary)
    ]
  },
  "jobs": {                         # statistics of jobs recorded with `stats -s`
    "JOB": {
      "start_time_epoch_seconds": 1700000000, "end_time_epoch_seconds": 1700003600,
                                    # default: when `stats -s` / `stats -x` ran (no stop: "Still Running")
      "slowdown_power_pct": 0.0, ...            # job-wide, names as in slurmgpu.gpu.dcgm.DcgmJobStats
      "gpus": {"0": {"energy_joules": 123456, "power_avg_watts": 250.5, ..., "xid_offsets_seconds": [61],
                     "processes": [{"pid": 4242, "kind": "compute", "sm_utilization_avg_pct": 87,
                                    "memory_utilization_avg_pct": 40}],
                     "overall_health": "pass", "health_incidents": [["pcie", "warn"]]}}
    }
  }
}
Job-statistics values are numbers, or null / one of dcgmi's words for a missing value ("Not Supported",
"Not Specified", "Not Found", "Insf. Permission"); null prints "Not Supported" (summaries always print "N/A").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV_VAR = "SLURMGPU_FAKE_DCGMI"

# dcgm_structs.h return codes, as dcgmi's exit status (main returns the negative dcgmReturn_t).
EXIT_BADPARAM = 256 - 1
EXIT_PARSE_ERROR = 256 - 2
EXIT_GENERIC_ERROR = 256 - 3
EXIT_NOT_CONFIGURED = 256 - 5
EXIT_NO_DATA = 256 - 14
EXIT_CONNECTION_NOT_VALID = 256 - 21
EXIT_DUPLICATE_KEY = 256 - 26
EXIT_NVVS_ERROR = 256 - 30

ALL_GPUS_GROUP = 0x7FFFFFFF  # DCGM_GROUP_ALL_GPUS, the default of -g

HOSTENGINE_DOWN = (  # Command.cpp, Connect() and DoExecuteConnectionFailure()
    "Error: unable to establish a connection to the specified host: localhost\n"
    "Error: Unable to connect to host engine. Host engine connection invalid/disconnected.\n"
)

# ---------------------------------------------------------------------------------------------------------------
# jsoncpp's toStyledString (StreamWriterBuilder defaults), see the module docstring
# ---------------------------------------------------------------------------------------------------------------


def _jsoncpp_styled(value: Any) -> str:
    out: list[str] = []
    indented = True
    indent = ""

    def write_indent() -> None:
        out.append("\n" + indent)

    def write_with_indent(text: str) -> None:
        nonlocal indented
        if not indented:
            write_indent()
        out.append(text)
        indented = False

    def write_value(node: Any) -> None:
        nonlocal indented, indent
        if node is None:
            out.append("null")
        elif isinstance(node, bool):
            out.append("true" if node else "false")
        elif isinstance(node, int):
            out.append(str(node))
        elif isinstance(node, str):
            out.append(json.dumps(node))  # same escapes as valueToQuotedStringN with emitUTF8 false
        elif isinstance(node, list):
            if not node:
                out.append("[]")
                return
            write_with_indent("[")  # commentStyle All: arrays are always multi-line
            indent += "\t"
            for i, child in enumerate(node):
                if not indented:
                    write_indent()
                indented = True
                write_value(child)
                indented = False
                if i < len(node) - 1:
                    out.append(",")
            indent = indent[:-1]
            write_with_indent("]")
        elif isinstance(node, dict):
            if not node:
                out.append("{}")
                return
            write_with_indent("{")
            indent += "\t"
            keys = sorted(node, key=lambda k: k.encode())  # std::map of CZString: memcmp, then length
            for i, key in enumerate(keys):
                write_with_indent(json.dumps(key))
                out.append(" : ")
                write_value(node[key])
                if i < len(keys) - 1:
                    out.append(",")
            indent = indent[:-1]
            write_with_indent("}")
        else:
            raise TypeError(f"cannot write {type(node).__name__} as JSON")

    write_value(value)
    return "".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# DcgmiOutput (JSON and tree) and CommandOutputController stencils
# ---------------------------------------------------------------------------------------------------------------


class _Boxer:
    """DcgmiOutputBoxer: a value, continuation lines ("overflow") and ordered children."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.overflow: list[str] = []
        self.children: dict[str, _Boxer] = {}

    def __getitem__(self, name: str) -> _Boxer:
        return self.children.setdefault(name, _Boxer())

    def to_json(self) -> Any:
        node: dict[str, Any] = {}
        if self.children:
            node["children"] = {k: v.to_json() for k, v in self.children.items()}
        if self.overflow:
            node["overflow"] = list(self.overflow)
        if self.value is not None:
            node["value"] = self.value
        return node or None  # a node that was only looked up stays a Json null


class _Output:
    """DcgmiOutput: a header list and ordered sections; rendered as DcgmiOutputJson or DcgmiOutputTree."""

    def __init__(self) -> None:
        self.header: list[str] = []
        self.sections: dict[str, _Boxer] = {}

    def __getitem__(self, name: str) -> _Boxer:
        return self.sections.setdefault(name, _Boxer())

    def json(self) -> str:
        doc: dict[str, Any] = {}
        if self.sections:
            doc["body"] = {k: v.to_json() for k, v in self.sections.items()}
        if self.header:
            doc["header"] = list(self.header)
        return _jsoncpp_styled(doc)

    def tree(self, left_width: int, right_width: int) -> str:
        full = left_width + right_width
        widths = (full - right_width - 1, right_width - 2)
        hline = "+" + "+".join("-" * w for w in widths) + "+\n"
        text = hline
        if self.header:
            for line in self.header:
                text += "| " + line.ljust(full - 3) + "|\n"
            text += "+" + "+".join("=" * w for w in widths) + "+\n"
        for name, node in self.sections.items():
            text += self._level(0, name, node, left_width, right_width)
        return text + hline

    def _level(self, level: int, label: str, node: _Boxer, left_width: int, right_width: int) -> str:
        prefix = "-> " if level else ""
        text = self._row(level, prefix, label, node.value or "", left_width, right_width)
        for line in node.overflow:
            text += self._row(level, "", "", line, left_width, right_width)
        for name, child in node.children.items():
            text += self._level(level + 1, name, child, left_width, right_width)
        return text

    @staticmethod
    def _row(level: int, prefix: str, label: str, value: str, left_width: int, right_width: int) -> str:
        left = prefix.rjust(level * 3) + label  # std::setw(level * 3) << prefix: right-aligned
        return "| " + left.ljust(left_width - 3) + " | " + value.ljust(right_width - 4) + " |\n"


def _fill(stencil: str, values: dict[str, str]) -> str:
    """CommandOutputController::display: each '<TAG ... >' becomes its value, padded or cut to the tag's width."""
    for tag, value in values.items():
        start = stencil.index(tag)
        end = stencil.index(">", start + len(tag)) + 1
        width = end - start
        value = value.replace("\t", " ").replace("\n", " ")
        if len(value) > width:
            value = value[: width - 3] + "..."
        stencil = stencil[:start] + value.ljust(width) + stencil[end:]
    return stencil


# ---------------------------------------------------------------------------------------------------------------
# health
# ---------------------------------------------------------------------------------------------------------------

# Health.cpp HelperSystemToString, in dcgmHealthSystems_enum bit order (the order incidents come in).
HEALTH_SYSTEM_LABELS = {
    "pcie": "PCIe system",
    "nvlink": "NVLINK system",
    "pmu": "PMU system",
    "mcu": "MCU system",
    "memory": "Memory system",
    "sm": "SM system",
    "inforom": "InfoROM system",
    "thermal": "Thermal system",
    "power": "Power system",
    "driver": "Driver",
}
HEALTH_WORDS = {"pass": "Healthy", "warn": "Warning", "fail": "Failure"}  # HelperHealthToString
_HEALTH_RANK = {"pass": 0, "warn": 1, "fail": 2}
# dcgm_errors.h DCGM_FR_*_MSG texts, used when a scenario incident gives no message.
DEFAULT_HEALTH_MESSAGES = {
    "pcie": "Detected more than 8 PCIe replays per minute for GPU {gpu} : 12",
    "nvlink": "GPU {gpu}'s NvLink link 0 is currently down",
    "pmu": "Detected XID 62 for GPU {gpu}",
    "mcu": "Detected XID 62 for GPU {gpu}",
    "memory": "Detected 1 volatile double-bit ECC error(s) in GPU {gpu}.",
    "sm": "Detected XID 13 for GPU {gpu}",
    "inforom": "A corrupt InfoROM has been detected in GPU {gpu}.",
    "thermal": "Detected clock throttling due to thermal violation in GPU {gpu}.",
    "power": "Detected clock throttling due to power violation in GPU {gpu}.",
    "driver": "Detected XID 79 for GPU {gpu}",
}
MAX_SIZE_OF_HEALTH_INFO = 54  # Health.cpp


def split_health_message(message: str) -> list[str]:
    """Health.cpp AddErrorMessage, ported statement by statement: cut a long message into <= 55-character pieces
    at word ends. Like the original, a cut just before '.', ',' or '/' drops that character."""
    msg = message.replace("\n", " ")
    if len(msg) <= MAX_SIZE_OF_HEALTH_INFO:
        return [msg]
    pieces: list[str] = []
    p = start = 0
    while start < len(msg):
        p += MAX_SIZE_OF_HEALTH_INFO
        if p >= len(msg):
            p = len(msg) - 1
        elif p != len(msg) - 1:
            while msg[p] != " " and p > 0:  # back to the last word end (the C++ has no lower bound)
                if msg[p + 1] in " .,/":
                    break
                p -= 1
            while msg[p] == " " and p > 0:
                p -= 1
        while start < len(msg) and msg[start] == " ":
            start += 1
        if start >= len(msg):
            break
        pieces.append(msg[start : p + 1] if p >= start else msg[start:])
        start = p + 2
    return pieces


def health_incidents(scenario: dict[str, Any], gpus: list[int]) -> list[dict[str, Any]]:
    """The scenario's incidents on `gpus`, completed with default messages, in the order dcgmHealthCheck gives."""
    order = list(HEALTH_SYSTEM_LABELS)
    incidents: list[dict[str, Any]] = []
    for item in scenario.get("health", {}).get("incidents", []):
        gpu = int(item.get("gpu", 0))
        system = str(item.get("system", "memory"))
        if gpu not in gpus or system not in HEALTH_SYSTEM_LABELS:
            continue
        level = str(item.get("health", "warn"))
        message = item.get("message") or DEFAULT_HEALTH_MESSAGES[system].format(gpu=gpu)
        incidents.append({"gpu": gpu, "system": system, "health": level, "message": str(message)})
    # dcgmHealthCheck lists incidents entity by entity, systems in bit order
    incidents.sort(key=lambda i: (gpus.index(i["gpu"]), order.index(i["system"])))
    return incidents


def render_health(incidents: list[dict[str, Any]], *, as_json: bool) -> str:
    """`dcgmi health -c [-j]` for incidents [{"gpu", "system", "health", "message"}] in DCGM's order."""
    out = _Output()
    out.header.append("Health Monitor Report")
    overall = max((i["health"] for i in incidents), key=_HEALTH_RANK.__getitem__, default="pass")
    out["Overall Health"].value = HEALTH_WORDS[overall]
    index = 0
    while index < len(incidents):  # GenerateOutputFromResponse / HandleOneEntity / AppendSystemIncidents
        gpu = incidents[index]["gpu"]
        entity = out["GPU"][str(gpu)]
        errors = entity["Errors"]
        entity_level = incidents[index]["health"]
        while index < len(incidents) and incidents[index]["gpu"] == gpu:
            system = incidents[index]["system"]
            level = incidents[index]["health"]
            messages = [incidents[index]["message"]]
            index += 1
            while (
                index < len(incidents)
                and incidents[index]["gpu"] == gpu
                and incidents[index]["system"] == system
            ):
                messages.append(incidents[index]["message"])
                level = max(level, incidents[index]["health"], key=_HEALTH_RANK.__getitem__)
                index += 1
            entity_level = max(entity_level, level, key=_HEALTH_RANK.__getitem__)
            node = errors[HEALTH_SYSTEM_LABELS[system]]
            node.value = HEALTH_WORDS[level]
            node.overflow.extend(split_health_message(", ".join(messages)))
        entity.value = HEALTH_WORDS[entity_level]
    return out.json() if as_json else out.tree(28, 60)


# ---------------------------------------------------------------------------------------------------------------
# diag (DCGM 4 JSON)
# ---------------------------------------------------------------------------------------------------------------

# nvvs/include/PluginStrings.h plugin names and categories; the level that first runs each (dcgmi diag -h).
DEFAULT_DIAG_TESTS = (
    ("software", "Deployment", 1),
    ("pcie", "Integration", 2),
    ("memory", "Hardware", 2),
    ("memory_bandwidth", "Stress", 3),
    ("diagnostic", "Hardware", 3),
    ("targeted_stress", "Stress", 3),
    ("targeted_power", "Stress", 3),
    ("pulse_test", "Hardware", 4),
    ("memtest", "Stress", 4),
)
_DIAG_WORDS = {
    "pass": "Pass",
    "skip": "Skip",
    "warn": "Fail",
    "fail": "Fail",
}  # Diag.cpp HelperDisplayDiagResult
_DIAG_RANK = {"not_run": 0, "skip": 1, "pass": 2, "warn": 3, "fail": 4}


def _warning_entry(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return {
            "error_category": int(item.get("error_category", 0)),
            "error_id": int(item.get("error_id", 0)),
            "error_severity": int(item.get("error_severity", 0)),
            "warning": str(item.get("warning", "")),
        }
    return {"error_category": 0, "error_id": 0, "error_severity": 0, "warning": str(item)}


def render_diag(scenario: dict[str, Any], level: int) -> tuple[str, int]:
    """`dcgmi diag -r LEVEL -j` (DCGM 4 layout) and the exit status dcgmi would return."""
    gpus = _gpus(scenario)
    tests = scenario.get("diag", {}).get("tests")
    if tests is None:
        tests = [{"name": n, "category": c, "level": lv} for n, c, lv in DEFAULT_DIAG_TESTS]
    defaults = {n: (c, lv) for n, c, lv in DEFAULT_DIAG_TESTS}
    chosen = []
    for test in tests:
        name = str(test["name"])
        category, first_level = defaults.get(name, ("Hardware", 1))
        if int(test.get("level", first_level)) <= level:
            chosen.append((str(test.get("category", category)), name, test))
    serials = scenario.get("serial_numbers", {})
    device_id = str(scenario.get("device_id", "2330"))
    entities = []
    for gpu in gpus:
        entity: dict[str, Any] = {"device_id": device_id, "entity_id": gpu}
        serial = serials.get(str(gpu), f"165282305{gpu:04d}")
        if serial != "<<<NULL>>>":  # DCGM_STR_BLANK serials are left out
            entity["serial_num"] = serial
        entities.append(entity)
    output: dict[str, Any] = {
        "entity_groups": [{"entities": entities, "entity_group": "GPU", "entity_group_id": 1}],
        "metadata": {
            "Driver Version Detected": str(scenario.get("driver_version", "580.82.09")),
            "version": str(scenario.get("dcgm_version", "4.2.3")),
        },
    }
    categories: dict[str, list[Any]] = {}
    failed = False
    for category, name, test in chosen:
        entry: dict[str, Any] = {"name": name}
        worst = "not_run"
        per_gpu = test.get("gpus", {})
        for gpu in gpus:
            spec = per_gpu.get(str(gpu), {})
            status = str(spec.get("status", "pass"))
            if status == "not_run":
                continue
            result: dict[str, Any] = {
                "entity_group": "GPU",
                "entity_group_id": 1,
                "entity_id": gpu,
                "status": _DIAG_WORDS[status],
            }
            if spec.get("warnings"):
                result["warnings"] = [_warning_entry(w) for w in spec["warnings"]]
            if spec.get("info"):
                result["info"] = [str(i) for i in spec["info"]]
            entry.setdefault("results", []).append(result)
            worst = max(worst, status, key=_DIAG_RANK.__getitem__)
        summary_status = str(test.get("status", worst))
        if summary_status != "not_run":
            summary: dict[str, Any] = {"status": _DIAG_WORDS[summary_status]}
            if test.get("warnings"):
                summary["warnings"] = [_warning_entry(w) for w in test["warnings"]]
            if test.get("info"):
                summary["info"] = [str(i) for i in test["info"]]
            entry["test_summary"] = summary
        failed = failed or worst in ("warn", "fail") or summary_status in ("warn", "fail")
        categories.setdefault(category, []).append(entry)
    if categories:
        output["DCGM Diagnostic"] = {
            "test_categories": [{"category": c, "tests": t} for c, t in categories.items()]
        }
    # GetFailureResult: any error on a GPU -> DCGM_ST_NVVS_ERROR; no tests at all -> DCGM_ST_NO_DATA
    exit_status = EXIT_NVVS_ERROR if failed else (0 if categories else EXIT_NO_DATA)
    return _jsoncpp_styled(output), exit_status


# ---------------------------------------------------------------------------------------------------------------
# stats (ProcessStats.cpp)
# ---------------------------------------------------------------------------------------------------------------

STATS_HEADER = (
    "+------------------------------------------------------------------------------+\n"
    "| <HEADER_INFO                                                                >|\n"
    "+====================================+=========================================+\n"
)
STATS_DATA = "| <DATA_NAME                        >| <DATA_INFO                            > |\n"
STATS_FOOTER = "+------------------------------------+-----------------------------------------+\n"
STATS_EXECUTION = "|-----  Execution Stats  ------------+-----------------------------------------|\n"
STATS_EVENTS = "+-----  Event Stats  ----------------+-----------------------------------------+\n"
STATS_PERFORMANCE = "+-----  Performance Stats  ----------+-----------------------------------------+\n"
STATS_SLOWDOWN = "+-----  Slowdown Stats  -------------+-----------------------------------------+\n"
STATS_COMPUTE_PROCESS_UTIL = (
    "+--  Compute Process Utilization  ---+-----------------------------------------+\n"
)
STATS_GRAPHICS_PROCESS_UTIL = (
    "+--  Graphics Process Utilization  ---+-----------------------------------------+\n"
)
OVERALL_HEALTH = "+-----  Overall Health  -------------+-----------------------------------------+\n"

BLANK_WORDS = ("Not Specified", "Not Found", "Not Supported", "Insf. Permission")
STATS_HEALTH_LABELS = {  # ProcessStats.cpp HelperHealthSystemToString
    "pcie": "PCIE Health",
    "nvlink": "NVLink Health",
    "pmu": "PMU Health",
    "mcu": "MCU Health",
    "memory": "Mem Health",
    "sm": "SM Health",
    "inforom": "InfoRom Health",
    "thermal": "Thermal Health",
    "power": "Power Health",
    "driver": "Driver Health",
}
_SUMMARY_FIELDS = (  # (row name, field stem, unit)
    ("SM Clock (MHz)", "sm_clock", "mhz"),
    ("Memory Clock (MHz)", "memory_clock", "mhz"),
    ("SM Utilization (%)", "sm_utilization", "pct"),
    ("Memory Utilization (%)", "memory_utilization", "pct"),
    ("PCIe Rx Bandwidth (megabytes)", "pcie_rx", "megabytes"),
    ("PCIe Tx Bandwidth (megabytes)", "pcie_tx", "megabytes"),
)
_SLOWDOWN_FIELDS = (
    ("Due to - Power (%)", "slowdown_power_pct"),
    ("       - Thermal (%)", "slowdown_thermal_pct"),
    ("       - Reliability (%)", "slowdown_reliability_pct"),
    ("       - Board Limit (%)", "slowdown_board_limit_pct"),
    ("       - Low Utilization (%)", "slowdown_low_utilization_pct"),
    ("       - Sync Boost (%)", "slowdown_sync_boost_pct"),
)


def _g(value: float) -> str:
    """`std::ostream << double` with default flags: printf %g, six significant digits."""
    return f"{value:g}"


def _blank(value: Any) -> str | None:
    """dcgmi's word for a value it does not have (HelperDisplayValue), or None when `value` is a number."""
    if value is None:
        return "Not Supported"
    if isinstance(value, str):
        if value not in BLANK_WORDS:
            raise ValueError(f"a job statistic is a number or one of {BLANK_WORDS}, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a job statistic is a number, not {value!r}")
    return None


def _int_cell(value: Any) -> str:
    """HelperDisplayValue(long long / int)."""
    return _blank(value) or str(int(value))


def _real_cell(value: Any) -> str:
    """HelperDisplayValue(double)."""
    return _blank(value) or _g(float(value))


def _row(name: str, value: str) -> str:
    return _fill(STATS_DATA, {"<DATA_NAME": name, "<DATA_INFO": value})


def _summary_cell(avg: Any, top: Any, low: Any, *, real: bool = False) -> str:
    """HelperFormatStat32Summary / StatFp64Summary / StatPCISummary: 'Avg: a, Max: b, Min: c', N/A if blank."""

    def one(value: Any) -> str:
        if value is None or isinstance(value, str):
            return "N/A"
        return _g(float(value)) if real else str(int(value))

    return f"Avg: {one(avg)}, Max: {one(top)}, Min: {one(low)}"


def _ctime(epoch: float | None, *, start: bool) -> str:
    """HelperFormatTimestamp: ctime() without its newline; 0 means not started / still running."""
    if epoch is None:
        return "Has Not Started" if start else "Still Running"
    return time.ctime(int(epoch))


def _hms(seconds: int) -> str:
    """HelperFormatTotalTime, bug included: the middle field is total minutes, not minutes past the hour."""
    return f"{seconds // 3600}:{seconds // 60:02d}:{seconds % 60:02d}"


def render_stats_job(job_id: str, job: dict[str, Any], gpus: list[int]) -> str:
    """`dcgmi stats -v -j JOB` (ViewJobStats, verbose branch)."""
    text = f"Successfully retrieved statistics for job: {job_id}. \n"
    start = job.get("start_time_epoch_seconds")
    end = job.get("end_time_epoch_seconds")
    for gpu in gpus:
        stats = job.get("gpus", {}).get(str(gpu), {})
        processes = list(stats.get("processes", []))
        text += _fill(STATS_HEADER, {"<HEADER_INFO": f"GPU ID: {gpu}"})
        text += STATS_EXECUTION
        text += _row("Start Time                     ", _ctime(start, start=True))
        text += _row("End Time                       ", _ctime(end, start=False))
        text += _row("Total Execution Time (sec)     ", _execution(start, end))
        text += _row("No. of Processes   ", str(len(processes)))
        text += STATS_PERFORMANCE
        text += _row("Energy Consumed (Joules)", _int_cell(stats.get("energy_joules")))
        text += _row(
            "Power Usage (Watts)",
            _summary_cell(
                stats.get("power_avg_watts"),
                stats.get("power_max_watts"),
                stats.get("power_min_watts"),
                real=True,
            ),
        )
        text += _row("Max GPU Memory Used (bytes)", _int_cell(stats.get("memory_max_bytes")))
        for name, stem, unit in _SUMMARY_FIELDS:
            text += _row(
                name,
                _summary_cell(
                    stats.get(f"{stem}_avg_{unit}"),
                    stats.get(f"{stem}_max_{unit}"),
                    stats.get(f"{stem}_min_{unit}"),
                ),
            )
        text += STATS_EVENTS
        text += _row("Single Bit ECC Errors", _int_cell(stats.get("ecc_single_bit_errors")))
        text += _row("Double Bit ECC Errors", _int_cell(stats.get("ecc_double_bit_errors")))
        text += _row("PCIe Replay Warnings", _int_cell(stats.get("pcie_replay_warnings")))
        offsets = [int(s) for s in stats.get("xid_offsets_seconds", [])]
        text += _row("Critical XID Errors", str(len(offsets)))
        for i, offset in enumerate(offsets):
            text += _row("XID (Hr:Min:Sec since start)" if i == 0 else "", _hms(offset))
        text += STATS_SLOWDOWN  # the job summary's numbers, in every GPU section
        for name, field in _SLOWDOWN_FIELDS:
            text += _row(name, _real_cell(job.get(field)))
        for kind, title in (
            ("compute", STATS_COMPUTE_PROCESS_UTIL),
            ("graphics", STATS_GRAPHICS_PROCESS_UTIL),
        ):
            chosen = [p for p in processes if p.get("kind", "compute") == kind]
            if chosen:
                text += title
            for process in chosen:
                text += _row("PID", str(int(process["pid"])))
                for name, field in (
                    ("    Avg SM Utilization (%)", "sm_utilization_avg_pct"),
                    ("    Avg Memory Utilization (%)", "memory_utilization_avg_pct"),
                ):
                    value = process.get(field)
                    text += _row(name, "Not Found" if value is None else str(int(value)))
        text += OVERALL_HEALTH
        text += _row("Overall Health", HEALTH_WORDS[str(stats.get("overall_health", "pass"))])
        for system, level in stats.get("health_incidents", []):
            text += _row("     " + STATS_HEALTH_LABELS.get(system, "<<<NULL>>>"), HEALTH_WORDS[str(level)])
        text += STATS_FOOTER + "\n"
    return text


def _execution(start: float | None, end: float | None) -> str:
    """HelperFormatTimeDifference over microsecond timestamps: ((end - start) / 10000) / 100.0, printed %g."""
    if not start:
        return "Has not started"
    if not end:
        return "Still Running"
    microseconds = round(end * 1e6) - round(start * 1e6)
    hundredths = (
        abs(microseconds) // 10000 * (1 if microseconds >= 0 else -1)
    )  # C++ integer division truncates
    return _g(hundredths / 100.0)


# ---------------------------------------------------------------------------------------------------------------
# state kept "in the host engine"
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _state(scenario_path: Path) -> Iterator[dict[str, Any]]:
    """The host engine's state for this scenario, locked for the whole command, written back atomically."""
    path = scenario_path.with_name(scenario_path.name + ".state")
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            state = {}
        state.setdefault("next_group_id", 2)
        for key in ("groups", "health_watches", "stats_watches", "jobs"):
            state.setdefault(key, {})
        yield state
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(path)


def _gpus(scenario: dict[str, Any]) -> list[int]:
    return [int(g) for g in scenario.get("gpus", [0])]


def _group_gpus(scenario: dict[str, Any], state: dict[str, Any], group: int | None) -> list[int] | None:
    if group is None or group in (0, ALL_GPUS_GROUP):  # DCGM_ALL_SUPPORTED_GPUS
        return _gpus(scenario)
    if group == 1:  # DCGM_ALL_SUPPORTED_NVSWITCHES
        return []
    found = state["groups"].get(str(group))
    return None if found is None else [int(g) for g in found["gpus"]]


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------

# (short, long) -> takes a value; from CommandLineParser.cpp
OPTIONS: dict[str, dict[str, bool]] = {
    "health": {"g": True, "group": True, "c": False, "check": False, "j": False, "json": False, "s": True,
               "set": True, "f": False, "fetch": False, "clear": False, "m": True, "max-keep-age": True,
               "u": True, "update-interval": True, "host": True},
    "diag": {"r": True, "run": True, "j": False, "json": False, "g": True, "group": True, "v": False,
             "verbose": False, "host": True, "i": True, "entity-id": True, "t": True, "timeout": True},
    "group": {"c": True, "create": True, "a": True, "add": True, "d": True, "delete": True, "l": False,
              "list": False, "g": True, "group": True, "i": False, "info": False, "j": False, "json": False,
              "host": True, "default": False},
    "stats": {"g": True, "group": True, "e": False, "enable": False, "u": True, "update-interval": True,
              "m": True, "max-keep-age": True, "s": True, "jstart": True, "x": True, "jstop": True,
              "j": True, "job": True, "r": True, "jremove": True, "a": False, "jremoveall": False,
              "v": False, "verbose": False, "host": True},
}  # fmt: skip
_CANONICAL = {"group": "g", "check": "c", "json": "j", "set": "s", "fetch": "f", "max-keep-age": "m",
              "update-interval": "u", "run": "r", "verbose": "v", "entity-id": "i", "timeout": "t",
              "create": "c", "add": "a", "delete": "d", "list": "l", "info": "i", "enable": "e",
              "jstart": "s", "jstop": "x", "job": "j", "jremove": "r", "jremoveall": "a"}  # fmt: skip


class _Exit(Exception):
    def __init__(self, status: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(status)
        self.status, self.stdout, self.stderr = status, stdout, stderr


def _parse(command: str, args: list[str]) -> dict[str, str]:
    spec = OPTIONS[command]
    parsed: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg[2:] if arg.startswith("--") else arg[1:] if arg.startswith("-") and len(arg) == 2 else None
        if name is None or name not in spec:
            raise _Exit(
                EXIT_PARSE_ERROR,
                stderr=f"Error: Couldn't find match for argument {arg}.\n"
                "An error occurred trying to parse the command line.\n",
            )
        key = _CANONICAL.get(name, name)
        if spec[name]:
            if i + 1 >= len(args):
                raise _Exit(
                    EXIT_PARSE_ERROR,
                    stderr=f"Error: Missing a value for this argument! for arg {name}.\n"
                    "An error occurred trying to parse the command line.\n",
                )
            parsed[key] = args[i + 1]
            i += 2
        else:
            parsed[key] = ""
            i += 1
    return parsed


def _int_arg(value: str, name: str) -> int:
    try:
        return int(value, 0)  # TCLAP_SETBASE_ZERO
    except ValueError:
        raise _Exit(
            EXIT_PARSE_ERROR,
            stderr=f"Error: Couldn't read argument value from string '{value}' for arg {name}.\n"
            "An error occurred trying to parse the command line.\n",
        ) from None


def _health(scenario: dict[str, Any], scenario_path: Path, opts: dict[str, str]) -> tuple[str, int]:
    group = None if "g" not in opts or opts["g"] == "g" else _int_arg(opts["g"], "group")
    with _state(scenario_path) as state:
        gpus = _group_gpus(scenario, state, group)
        if "s" in opts:
            if gpus is None:
                return (
                    "Error: Unable to set health watches. Return: The Group is not found\n",
                    EXIT_GENERIC_ERROR,
                )
            state["health_watches"][str(group if group is not None else ALL_GPUS_GROUP)] = opts["s"]
            return "Health monitor systems set successfully.\n", 0
        if "c" not in opts:
            raise _Exit(2, stderr="fake dcgmi: only 'health -c' and 'health -s' are simulated\n")
        if gpus is None:
            return (
                "Error: Unable to check health watches. Return: The Group is not found\n",
                EXIT_GENERIC_ERROR,
            )
        key = str(group if group is not None else ALL_GPUS_GROUP)
        if not scenario.get("health", {}).get("watches", True) and key not in state["health_watches"]:
            return "Error: Health watches not enabled. Please enable watches. \n", EXIT_GENERIC_ERROR
    return render_health(health_incidents(scenario, gpus), as_json="j" in opts), 0


def _diag(scenario: dict[str, Any], opts: dict[str, str]) -> tuple[str, int]:
    if "j" not in opts:
        raise _Exit(2, stderr="fake dcgmi: only 'diag -j' is simulated\n")
    run = opts.get("r", "")
    level = {"1": 1, "2": 2, "3": 3, "4": 4, "short": 1, "medium": 2, "long": 3, "xlong": 4}.get(run)
    if level is None:
        raise _Exit(
            EXIT_PARSE_ERROR,
            stderr=f"Error: Invalid run value '{run}' for arg run.\nAn error occurred trying to parse the command line.\n",
        )
    return render_diag(scenario, level)


def _group(scenario: dict[str, Any], scenario_path: Path, opts: dict[str, str]) -> tuple[str, int]:
    with _state(scenario_path) as state:
        if "c" in opts:
            name = opts["c"]
            group_id = int(state["next_group_id"])
            state["next_group_id"] = group_id + 1
            members: list[int] = []
            state["groups"][str(group_id)] = {"name": name, "gpus": members}
            text = f'Successfully created group "{name}" with a group ID of {group_id}\n'
            if opts.get("a"):
                for i, item in enumerate(opts["a"].split(",")):
                    gpu_text = item.strip().removeprefix("gpu:")
                    gpu = int(gpu_text) if gpu_text.isdigit() else -1
                    if gpu not in _gpus(scenario) or gpu in members:
                        # Group.cpp RunGroupManageDevice; the blank line is its "partially successful" slot
                        text += ("Operation partially successful." if i > 0 else "") + "\n"
                        text += (
                            f"Error: Unable to perform add of GPU {gpu_text} into group {group_id}. "
                            "Return: Bad parameter passed to function.\n"
                            "The GPU was not found or is already in the group.\n"
                        )
                        return text, EXIT_BADPARAM
                    members.append(gpu)
                text += "Add to group operation successful.\n"
            return text, 0
        if "d" in opts:
            group_id = _int_arg(opts["d"], "delete")
            if state["groups"].pop(str(group_id), None) is None:
                return (
                    f"Error: Cannot destroy group {group_id}. Return: The Group is not found.\n",
                    EXIT_NOT_CONFIGURED,
                )
            state["health_watches"].pop(str(group_id), None)
            state["stats_watches"].pop(str(group_id), None)
            return f"Successfully removed group {group_id}\n", 0
    raise _Exit(2, stderr="fake dcgmi: only 'group -c' and 'group -d' are simulated\n")


def _stats(scenario: dict[str, Any], scenario_path: Path, opts: dict[str, str]) -> tuple[str, int]:
    group = _int_arg(opts["g"], "group") if "g" in opts else ALL_GPUS_GROUP
    now = time.time()
    with _state(scenario_path) as state:
        jobs = state["jobs"]
        if "e" in opts:
            if _group_gpus(scenario, state, group) is None:
                return (
                    "Error: Unable to enable process watches for group. Return: The Group is not found.\n",
                    EXIT_NOT_CONFIGURED,
                )
            state["stats_watches"][str(group)] = {
                "update_interval_ms": _int_arg(opts.get("u", "30000"), "update-interval"),
                "max_keep_age_seconds": _int_arg(opts.get("m", "3600"), "max-keep-age"),
            }
            return "Successfully started process watches.\n", 0
        if "s" in opts:
            job = opts["s"]
            gpus = _group_gpus(scenario, state, group)
            if len(job) > 64:
                return "Error: Unable to start job for group. Return: Job ID too long.\n", EXIT_BADPARAM
            if gpus is None:
                return (
                    "Error: Unable to start job for group. Return: The Group is not found.\n",
                    EXIT_NOT_CONFIGURED,
                )
            if job in jobs:
                return (
                    "Error: Unable to start job for group. Return: This Job Id is in use. Please use another job Id.\n",
                    EXIT_DUPLICATE_KEY,
                )
            jobs[job] = {"gpus": gpus, "start": now, "stop": None}
            return f"Successfully started recording stats for {job}.\n", 0
        if "x" in opts:
            job = opts["x"]
            if job not in jobs:
                return f"Error: Job {job} was not found.\n", EXIT_NO_DATA
            jobs[job]["stop"] = now
            return f"Successfully stopped recording stats for {job}.\n", 0
        if "r" in opts:
            job = opts["r"]
            if jobs.pop(job, None) is None:
                return f"Error: Job {job} was not found.\n", EXIT_NO_DATA
            return f"Successfully removed job {job}.\n", 0
        if "j" in opts:
            job = opts["j"]
            recorded = jobs.get(job)
            if recorded is None:
                return (
                    "Error: Unable to retrieve job statistics. Return: No data is available.\n",
                    EXIT_NO_DATA,
                )
            if "v" not in opts:
                raise _Exit(2, stderr="fake dcgmi: only 'stats -v -j' is simulated\n")
            values = dict(scenario.get("jobs", {}).get(job, {}))
            values.setdefault("start_time_epoch_seconds", recorded["start"])
            values.setdefault("end_time_epoch_seconds", recorded["stop"])
            return render_stats_job(job, values, [int(g) for g in recorded["gpus"]]), 0
    raise _Exit(2, stderr="fake dcgmi: this 'stats' form is not simulated\n")


def _broken(scenario: dict[str, Any], command: str) -> dict[str, Any] | None:
    broken = scenario.get("broken")
    if not isinstance(broken, dict):
        return None
    commands = broken.get("commands")
    return broken if commands is None or command in commands else None


def run(argv: list[str]) -> tuple[str, str, int]:
    """One invocation: (stdout, stderr, exit status)."""
    location = os.environ.get(ENV_VAR)
    if not location:
        return "", f"fake dcgmi: set {ENV_VAR} to a scenario file\n", 2
    scenario_path = Path(location)
    try:
        scenario = json.loads(scenario_path.read_text())
    except (OSError, ValueError) as exc:
        return "", f"fake dcgmi: cannot read scenario {scenario_path}: {exc}\n", 2
    if not argv or argv[0] not in OPTIONS:
        return "ERROR: Invalid subsystem.\n\n", "", EXIT_BADPARAM
    command = argv[0]
    broken = _broken(scenario, command)
    if broken is not None:
        mode = broken.get("mode", "garbage")
        if mode == "hang":
            time.sleep(float(broken.get("sleep_seconds", 3600)))
        elif mode == "hostengine_down" and command != "diag":
            # `dcgmi diag` starts an embedded host engine instead (Diag.cpp, StartDiag::DoExecuteConnectionFailure)
            return HOSTENGINE_DOWN, "", EXIT_CONNECTION_NOT_VALID
        elif mode == "exit":
            output = str(
                broken.get("output", "Error: Unable to complete the operation. Return: NVML error.\n")
            )
            return output, "", int(broken.get("exit_code", 255))
        elif mode == "garbage":
            return "\x1b[31m@@ 0x7f3a: segfault in <unknown>\n{{{ ]] not dcgmi | | |\n\x00\x01\n", "", 0
    try:
        opts = _parse(command, argv[1:])
        if command == "health":
            out, status = _health(scenario, scenario_path, opts)
        elif command == "diag":
            out, status = _diag(scenario, opts)
        elif command == "group":
            out, status = _group(scenario, scenario_path, opts)
        else:
            out, status = _stats(scenario, scenario_path, opts)
    except _Exit as stop:
        return stop.stdout, stop.stderr, stop.status
    if broken is not None and broken.get("mode") == "truncated":
        out = out[: len(out) // 2]
    return out, "", status


def main(argv: list[str] | None = None) -> int:
    stdout, stderr, status = run(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
