"""The DCGM gateway (slurmgpu.gpu.dcgm) against the fake dcgmi (slurmgpu.sim.fake_dcgmi) run as a real program,
plus the parsers on literal output copied from NVIDIA's sources and from real runs quoted in public places.

Where the literal samples come from:
- STATS_UBER_PROF: `dcgmi stats -v -j 232` as printed in an epilog, quoted in chauhang/uber-prof,
  training-job/README.md (GitHub), copied verbatim.
- STATS_SUMMARY_ISSUE_93: `dcgmi stats -g 2 -j 952404` (no -v) from NVIDIA/DCGM issue #93, DCGM 3.1.8, verbatim.
- DIAG_DCGM4_GB10: `dcgmi diag -r 1 -j` on a GB10 DGX Spark, DCGM 4.2.3, driver 580.82.09 (dcgmi exited 226),
  quoted verbatim in a public Go test fixture (`dcgm4GB10`); the space jsoncpp writes after " :" at a line end
  was lost in that copy and is restored here (BuiltStyledStreamWriter colonSymbol " : ", see the fake).
- DIAG_DCGM3: built by hand from dcgmi/Diag.cpp of DCGM 3.3 (HelperJsonBuildOutput, HelperJsonAddBasicTests,
  HelperJsonAddResult), not copied from a run; indented the way DCGM 3's nvvs "real output" test shows.
- HEALTH_JSON: the three incidents of dcgmi/tests/HealthTests.cpp ("Health::GenerateOutputFromResponse") laid
  out by dcgmi/DcgmiOutput.{h,cpp} (DcgmiOutputJson) and jsoncpp's writer; no public copy of real
  `health -c -j` output with incidents was found.
- The group line: testing/python3/tests/test_dcgmi.py in NVIDIA/DCGM ('Successfully created group "test_group"
  with a group ID of 2').
"""

from __future__ import annotations

import json
import os
import stat
import string
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slurmgpu
from slurmgpu.errors import InputError, SlurmgpuError
from slurmgpu.gpu.dcgm import (
    DcgmError,
    Dcgmi,
    DcgmJobStats,
    parse_diag_json,
    parse_group_create,
    parse_health_json,
    parse_stats_job,
)
from slurmgpu.sim import fake_dcgmi

SRC = Path(slurmgpu.__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# literal samples (see the module docstring for where each comes from)
# ---------------------------------------------------------------------------------------------------------------

STATS_UBER_PROF = (
    "Successfully retrieved statistics for job: 232. \n"
    + """\
+------------------------------------------------------------------------------+
| GPU ID: 0                                                                    |
+====================================+=========================================+
|-----  Execution Stats  ------------+-----------------------------------------|
| Start Time                         | Fri Dec 10 19:40:36 2021                |
| End Time                           | Fri Dec 10 19:41:24 2021                |
| Total Execution Time (sec)         | 47.57                                   |
| No. of Processes                   | 1                                       |
+-----  Performance Stats  ----------+-----------------------------------------+
| Energy Consumed (Joules)           | 0                                       |
| Power Usage (Watts)                | Avg: 37.8985, Max: 45.874, Min: 22.999  |
| Max GPU Memory Used (bytes)        | 2628780032                              |
| SM Clock (MHz)                     | Avg: 1312, Max: 1312, Min: 1312         |
| Memory Clock (MHz)                 | Avg: 877, Max: 877, Min: 877            |
| SM Utilization (%)                 | Avg: 0, Max: 0, Min: 0                  |
| Memory Utilization (%)             | Avg: 0, Max: 0, Min: 0                  |
| PCIe Rx Bandwidth (megabytes)      | Avg: N/A, Max: N/A, Min: N/A            |
| PCIe Tx Bandwidth (megabytes)      | Avg: N/A, Max: N/A, Min: N/A            |
+-----  Event Stats  ----------------+-----------------------------------------+
| Single Bit ECC Errors              | 0                                       |
| Double Bit ECC Errors              | 0                                       |
| PCIe Replay Warnings               | 0                                       |
| Critical XID Errors                | 0                                       |
+-----  Slowdown Stats  -------------+-----------------------------------------+
| Due to - Power (%)                 | 0                                       |
|        - Thermal (%)               | 0                                       |
|        - Reliability (%)           | Not Supported                           |
|        - Board Limit (%)           | Not Supported                           |
|        - Low Utilization (%)       | Not Supported                           |
|        - Sync Boost (%)            | 0                                       |
+--  Compute Process Utilization  ---+-----------------------------------------+
| PID                                | 10140                                   |
|     Avg SM Utilization (%)         | 6                                       |
|     Avg Memory Utilization (%)     | 1                                       |
+-----  Overall Health  -------------+-----------------------------------------+
| Overall Health                     | Healthy                                 |
+------------------------------------+-----------------------------------------+

"""
)

STATS_SUMMARY_ISSUE_93 = """\
Successfully retrieved statistics for job: 952404.
+------------------------------------------------------------------------------+
| Summary                                                                      |
+====================================+=========================================+
|-----  Execution Stats  ------------+-----------------------------------------|
| Start Time                         | Thu Aug  3 16:35:00 2023                |
| End Time                           | Thu Aug  3 18:21:32 2023                |
| Total Execution Time (sec)         | 6391.9                                  |
| No. of Processes                   | 0                                       |
+-----  Performance Stats  ----------+-----------------------------------------+
| Energy Consumed (Joules)           | Not Specified                           |
| Power Usage (Watts)                | Avg: N/A, Max: N/A, Min: N/A            |
| Max GPU Memory Used (bytes)        | 0                                       |
| Clocks and PCIe Performance        | Available per GPU in verbose mode       |
+-----  Event Stats  ----------------+-----------------------------------------+
| Single Bit ECC Errors              | Not Specified                           |
| Double Bit ECC Errors              | Not Specified                           |
| PCIe Replay Warnings               | Not Specified                           |
| Critical XID Errors                | 0                                       |
+-----  Slowdown Stats  -------------+-----------------------------------------+
| Due to - Power (%)                 | Not Supported                           |
|        - Thermal (%)               | Not Supported                           |
|        - Reliability (%)           | Not Supported                           |
|        - Board Limit (%)           | Not Supported                           |
|        - Low Utilization (%)       | Not Supported                           |
|        - Sync Boost (%)            | Not Specified                           |
+-----  Overall Health  -------------+-----------------------------------------+
| Overall Health                     | Healthy                                 |
+------------------------------------+-----------------------------------------+
"""

PERSISTENCE_WARNING = (
    "Persistence Mode: Persistence mode for GPU 0 is disabled. Enable persistence mode by running "
    '"nvidia-smi -i <gpuId> -pm 1 " as root.'
)
SRAM_INFO = (
    "Error getting the SRAM Threshold Count for GPU 0. Status = 0. Value = 9223372036854775794. "
    "SRAM Threshold checking was skipped."
)
DIAG_DCGM4_GB10 = (
    "{\n"
    '\t"DCGM Diagnostic" : \n\t{\n'
    '\t\t"test_categories" : \n\t\t[\n'
    "\t\t\t{\n"
    '\t\t\t\t"category" : "Deployment",\n'
    '\t\t\t\t"tests" : \n\t\t\t\t[\n'
    "\t\t\t\t\t{\n"
    '\t\t\t\t\t\t"name" : "software",\n'
    '\t\t\t\t\t\t"results" : \n\t\t\t\t\t\t[\n'
    "\t\t\t\t\t\t\t{\n"
    '\t\t\t\t\t\t\t\t"entity_group" : "GPU",\n'
    '\t\t\t\t\t\t\t\t"entity_group_id" : 1,\n'
    '\t\t\t\t\t\t\t\t"entity_id" : 0,\n'
    '\t\t\t\t\t\t\t\t"status" : "Fail",\n'
    '\t\t\t\t\t\t\t\t"warnings" : \n\t\t\t\t\t\t\t\t[\n'
    "\t\t\t\t\t\t\t\t\t{\n"
    '\t\t\t\t\t\t\t\t\t\t"error_category" : 8,\n'
    '\t\t\t\t\t\t\t\t\t\t"error_id" : 29,\n'
    '\t\t\t\t\t\t\t\t\t\t"error_severity" : 5,\n'
    f'\t\t\t\t\t\t\t\t\t\t"warning" : {json.dumps(PERSISTENCE_WARNING)}\n'
    "\t\t\t\t\t\t\t\t\t}\n"
    "\t\t\t\t\t\t\t\t]\n"
    "\t\t\t\t\t\t\t}\n"
    "\t\t\t\t\t\t],\n"
    '\t\t\t\t\t\t"test_summary" : \n\t\t\t\t\t\t{\n'
    '\t\t\t\t\t\t\t"info" : \n\t\t\t\t\t\t\t[\n'
    f"\t\t\t\t\t\t\t\t{json.dumps(SRAM_INFO)}\n"
    "\t\t\t\t\t\t\t],\n"
    '\t\t\t\t\t\t\t"status" : "Fail"\n'
    "\t\t\t\t\t\t}\n"
    "\t\t\t\t\t}\n"
    "\t\t\t\t]\n"
    "\t\t\t}\n"
    "\t\t]\n"
    "\t},\n"
    '\t"entity_groups" : \n\t[\n'
    "\t\t{\n"
    '\t\t\t"entities" : \n\t\t\t[\n'
    "\t\t\t\t{\n"
    '\t\t\t\t\t"device_id" : "2e12",\n'
    '\t\t\t\t\t"entity_id" : 0,\n'
    '\t\t\t\t\t"serial_num" : "<<<NOT_SUPPORTED>>>"\n'
    "\t\t\t\t}\n"
    "\t\t\t],\n"
    '\t\t\t"entity_group" : "GPU",\n'
    '\t\t\t"entity_group_id" : 1\n'
    "\t\t}\n"
    "\t],\n"
    '\t"metadata" : \n\t{\n'
    '\t\t"Driver Version Detected" : "580.82.09",\n'
    '\t\t"version" : "4.2.3"\n'
    "\t}\n"
    "}\n"
)

DIAG_DCGM3 = """{
\t"DCGM GPU Diagnostic" :
\t{
\t\t"test_categories" :
\t\t[
\t\t\t{
\t\t\t\t"category" : "Deployment",
\t\t\t\t"tests" :
\t\t\t\t[
\t\t\t\t\t{ "name" : "Denylist", "results" : [ { "status" : "Pass" } ] },
\t\t\t\t\t{ "name" : "Persistence Mode", "results" : [ { "gpu_id" : 1, "status" : "Fail",
\t\t\t\t\t  "warnings" : [ { "warnings" : "Persistence mode for GPU 1 is disabled.", "error_id" : 29 } ] } ] }
\t\t\t\t]
\t\t\t},
\t\t\t{
\t\t\t\t"category" : "Hardware",
\t\t\t\t"tests" :
\t\t\t\t[
\t\t\t\t\t{ "name" : "GPU Memory", "results" : [
\t\t\t\t\t\t{ "gpu_id" : "0", "status" : "Pass", "info" : "Allocated 95% of memory" },
\t\t\t\t\t\t{ "gpu_id" : "1", "status" : "Fail",
\t\t\t\t\t\t  "warnings" : [ { "warning" : "Detected 1 volatile double-bit ECC error(s) in GPU 1." } ] } ] }
\t\t\t\t]
\t\t\t}
\t\t]
\t},
\t"Driver Version Detected" : "535.104.05",
\t"GPU Device IDs" : [ "20b5", "20b5" ],
\t"version" : "3.3.5"
}
"""

HEALTH_JSON = """{
\t"body" :
\t{
\t\t"GPU" :
\t\t{
\t\t\t"children" :
\t\t\t{
\t\t\t\t"0" :
\t\t\t\t{
\t\t\t\t\t"children" :
\t\t\t\t\t{
\t\t\t\t\t\t"Errors" :
\t\t\t\t\t\t{
\t\t\t\t\t\t\t"children" :
\t\t\t\t\t\t\t{
\t\t\t\t\t\t\t\t"Memory system" :
\t\t\t\t\t\t\t\t{
\t\t\t\t\t\t\t\t\t"overflow" :
\t\t\t\t\t\t\t\t\t[
\t\t\t\t\t\t\t\t\t\t"The car is red? Are you sure because that doesn't seem",
\t\t\t\t\t\t\t\t\t\t"like the color I ordered."
\t\t\t\t\t\t\t\t\t],
\t\t\t\t\t\t\t\t\t"value" : "Warning"
\t\t\t\t\t\t\t\t}
\t\t\t\t\t\t\t}
\t\t\t\t\t\t}
\t\t\t\t\t},
\t\t\t\t\t"value" : "Warning"
\t\t\t\t},
\t\t\t\t"1" :
\t\t\t\t{
\t\t\t\t\t"children" :
\t\t\t\t\t{
\t\t\t\t\t\t"Errors" :
\t\t\t\t\t\t{
\t\t\t\t\t\t\t"children" :
\t\t\t\t\t\t\t{
\t\t\t\t\t\t\t\t"Memory system" :
\t\t\t\t\t\t\t\t{
\t\t\t\t\t\t\t\t\t"overflow" :
\t\t\t\t\t\t\t\t\t[
\t\t\t\t\t\t\t\t\t\t"Green can be emerald and beautiful, but there are",
\t\t\t\t\t\t\t\t\t\t"shades of green which are sure to disappoint."
\t\t\t\t\t\t\t\t\t],
\t\t\t\t\t\t\t\t\t"value" : "Failure"
\t\t\t\t\t\t\t\t},
\t\t\t\t\t\t\t\t"SM system" :
\t\t\t\t\t\t\t\t{
\t\t\t\t\t\t\t\t\t"overflow" :
\t\t\t\t\t\t\t\t\t[
\t\t\t\t\t\t\t\t\t\t"The guards wear Kholin blue because otherwise they'd be",
\t\t\t\t\t\t\t\t\t\t"lame."
\t\t\t\t\t\t\t\t\t],
\t\t\t\t\t\t\t\t\t"value" : "Warning"
\t\t\t\t\t\t\t\t}
\t\t\t\t\t\t\t}
\t\t\t\t\t\t}
\t\t\t\t\t},
\t\t\t\t\t"value" : "Failure"
\t\t\t\t}
\t\t\t}
\t\t},
\t\t"Overall Health" :
\t\t{
\t\t\t"value" : "Failure"
\t\t}
\t},
\t"header" :
\t[
\t\t"Health Monitor Report"
\t]
}
""".replace(" :\n", " : \n")  # jsoncpp leaves a space after " :" at a line end

HEALTH_TEST_INCIDENTS = [  # dcgmi/tests/HealthTests.cpp, SCENARIO("Health::GenerateOutputFromResponse")
    {
        "gpu": 0,
        "system": "memory",
        "health": "warn",
        "message": "The car is red? Are you sure because that doesn't seem like the color I ordered.",
    },
    {
        "gpu": 1,
        "system": "memory",
        "health": "fail",
        "message": "Green can be emerald and beautiful, but there are shades of green which are sure to "
        "disappoint.",
    },
    {
        "gpu": 1,
        "system": "sm",
        "health": "warn",
        "message": "The guards wear Kholin blue because otherwise they'd be lame.",
    },
]

# ---------------------------------------------------------------------------------------------------------------
# helpers: a scenario file and an executable "dcgmi" that runs the fake
# ---------------------------------------------------------------------------------------------------------------


def write_scenario(tmp_path: Path, scenario: dict[str, Any]) -> Path:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    return path


def install_dcgmi(tmp_path: Path, scenario: dict[str, Any], *, sleep_seconds: float = 0) -> Path:
    """A wrapper script standing in for /usr/bin/dcgmi; it sets its own environment (the gateway passes a
    minimal one), like a site wrapper would."""
    scenario_path = write_scenario(tmp_path, scenario)
    wrapper = tmp_path / "bin" / "dcgmi"
    wrapper.parent.mkdir(exist_ok=True)
    lines = [
        "#!/bin/sh",
        f"export PYTHONPATH={SRC}",
        f"export SLURMGPU_FAKE_DCGMI={scenario_path}",
    ]
    if sleep_seconds:
        lines.append(f"sleep {sleep_seconds}")
    lines.append(f'exec {sys.executable} -m slurmgpu.sim.fake_dcgmi "$@"')
    wrapper.write_text("\n".join(lines) + "\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper


def gateway(tmp_path: Path, scenario: dict[str, Any], **kwargs: Any) -> Dcgmi:
    timeout = kwargs.pop("timeout_seconds", 30.0)
    return Dcgmi(install_dcgmi(tmp_path, scenario, **kwargs), timeout_seconds=timeout)


def run_fake(scenario_path: Path, *argv: str) -> tuple[str, str, int]:
    old = os.environ.get(fake_dcgmi.ENV_VAR)
    os.environ[fake_dcgmi.ENV_VAR] = str(scenario_path)
    try:
        return fake_dcgmi.run(list(argv))
    finally:
        if old is None:
            del os.environ[fake_dcgmi.ENV_VAR]
        else:
            os.environ[fake_dcgmi.ENV_VAR] = old


# ---------------------------------------------------------------------------------------------------------------
# health through the fake
# ---------------------------------------------------------------------------------------------------------------


def test_availability(tmp_path: Path) -> None:
    assert gateway(tmp_path, {}).available()
    assert not Dcgmi(tmp_path / "missing").available()
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    assert not Dcgmi(plain).available()
    with pytest.raises(InputError, match="absolute"):
        Dcgmi(Path("dcgmi"))


def test_healthy_node(tmp_path: Path) -> None:
    health = gateway(tmp_path, {"gpus": [0, 1, 2, 3]}).health()
    assert health.overall == "pass"
    assert health.entities == ()
    assert health.error is None


def test_warning_on_one_gpu(tmp_path: Path) -> None:
    scenario = {"gpus": [0, 1], "health": {"incidents": [{"gpu": 1, "system": "pcie", "health": "warn"}]}}
    health = gateway(tmp_path, scenario).health()
    assert health.overall == "warn"
    assert health.gpu(0) is None
    gpu1 = health.gpu(1)
    assert gpu1 is not None and gpu1.health == "warn"
    (incident,) = gpu1.incidents
    assert incident.system == "pcie"
    assert incident.health == "warn"
    assert incident.message == "Detected more than 8 PCIe replays per minute for GPU 1 : 12"  # dcgm_errors.h
    assert health.error is None


def test_failure_with_several_incidents(tmp_path: Path) -> None:
    long_text = (
        "Detected 3 volatile double-bit ECC error(s) in GPU 0. Drain the GPU and reset it or reboot the node"
    )
    scenario = {
        "gpus": [0, 1],
        "health": {
            "incidents": [
                {"gpu": 0, "system": "thermal", "health": "warn"},
                {"gpu": 0, "system": "memory", "health": "fail", "message": long_text},
                {"gpu": 0, "system": "memory", "health": "warn", "message": "A pending retired page"},
                {"gpu": 1, "system": "power", "health": "warn"},
            ]
        },
    }
    health = gateway(tmp_path, scenario).health()
    assert health.overall == "fail"
    gpu0 = health.gpu(0)
    assert gpu0 is not None and gpu0.health == "fail"
    by_system = {i.system: i for i in gpu0.incidents}
    assert by_system["memory"].health == "fail"  # the worst of the two memory incidents
    # dcgmi joins one system's messages with ", " and cuts at word ends; a cut right before "," loses the comma
    assert by_system["memory"].message.startswith("Detected 3 volatile double-bit ECC error(s) in GPU 0.")
    assert by_system["memory"].message.endswith("A pending retired page")
    assert by_system["thermal"].message == "Detected clock throttling due to thermal violation in GPU 0."
    gpu1 = health.gpu(1)
    assert gpu1 is not None and [i.system for i in gpu1.incidents] == ["power"]


def test_health_of_a_group_covers_its_gpus_only(tmp_path: Path) -> None:
    scenario = {
        "gpus": [0, 1, 2, 3],
        "health": {"incidents": [{"gpu": 3, "system": "nvlink", "health": "fail"}]},
    }
    dcgmi = gateway(tmp_path, scenario)
    group = dcgmi.group_create("job42", [0, 1])
    assert dcgmi.health(group).overall == "pass"
    assert dcgmi.health().overall == "fail"
    missing = dcgmi.health(999)
    assert missing.overall is None
    assert missing.error is not None and "The Group is not found" in missing.error


def test_health_watches_must_be_set(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {"health": {"watches": False}})
    health = dcgmi.health()
    assert health.overall is None
    assert health.error == (
        "dcgmi health -c -j failed (exit 253, DCGM_ST_GENERIC_ERROR): "
        "Error: Health watches not enabled. Please enable watches."
    )
    dcgmi.health_watch()
    assert dcgmi.health().overall == "pass"
    with pytest.raises(InputError):
        dcgmi.health_watch(systems="x")


# ---------------------------------------------------------------------------------------------------------------
# diagnostics through the fake
# ---------------------------------------------------------------------------------------------------------------


def test_diag_level_1_passes(tmp_path: Path) -> None:
    diag = gateway(tmp_path, {"gpus": [0, 1]}).diag(1)
    assert diag.overall == "pass"
    assert diag.error is None
    assert diag.level == 1
    assert [t.name for t in diag.tests] == ["software"]
    assert [(g.gpu_id, g.result) for g in diag.tests[0].gpus] == [(0, "pass"), (1, "pass")]
    assert diag.dcgm_version == "4.2.3"
    assert diag.gpu_ids == (0, 1)


def test_diag_failure_is_parsed_although_dcgmi_exits_226(tmp_path: Path) -> None:
    scenario = {
        "gpus": [0, 1],
        "diag": {
            "tests": [
                {"name": "software", "level": 1},
                {"name": "pcie", "level": 2, "gpus": {"0": {"status": "skip", "info": ["no P2P"]}}},
                {
                    "name": "memory",
                    "level": 2,
                    "gpus": {
                        "1": {
                            "status": "fail",
                            "warnings": [
                                {
                                    "warning": "Detected 1 volatile double-bit ECC error(s) in GPU 1.",
                                    "error_id": 5,
                                }
                            ],
                        }
                    },
                },
                {"name": "targeted_power", "level": 3},
            ]
        },
    }
    diag = gateway(tmp_path, scenario).diag(2)
    assert diag.overall == "fail"
    assert diag.error is None
    assert [t.name for t in diag.tests] == ["software", "pcie", "memory"]  # level 3 tests did not run
    memory = diag.tests[2]
    assert memory.category == "Hardware"
    assert memory.result == "fail"
    assert memory.gpus[1].warnings == ("Detected 1 volatile double-bit ECC error(s) in GPU 1.",)
    assert diag.failed_gpus() == (1,)
    pcie = diag.tests[1]
    assert pcie.gpus[0].result == "skip" and pcie.gpus[0].info == ("no P2P",)


def test_diag_warning_reads_as_failure_and_not_run_is_listed(tmp_path: Path) -> None:
    scenario = {
        "gpus": [0, 1],
        "diag": {
            "tests": [{"name": "software", "gpus": {"0": {"status": "warn"}, "1": {"status": "not_run"}}}]
        },
    }
    (software,) = gateway(tmp_path, scenario).diag(1).tests
    # Diag.cpp writes a warning as "Fail" in JSON; a GPU that did not run the test has no entry
    assert [(g.gpu_id, g.result) for g in software.gpus] == [(0, "fail"), (1, "not_run")]


@pytest.mark.parametrize("level", [0, 5, -1, True, 2.0, "1"])
def test_diag_levels_are_1_to_4(tmp_path: Path, level: Any) -> None:
    with pytest.raises(InputError, match="1, 2, 3 or 4"):
        Dcgmi(tmp_path / "dcgmi").diag(level)


# ---------------------------------------------------------------------------------------------------------------
# groups and job statistics through the fake
# ---------------------------------------------------------------------------------------------------------------


def test_group_ids_increase_and_delete(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {"gpus": [0, 1, 2, 3]})
    assert dcgmi.group_create("a", [0, 1]) == 2  # 0 and 1 are DCGM's own groups
    assert dcgmi.group_create("b", [2]) == 3
    dcgmi.group_delete(2)
    assert dcgmi.group_create("c", [3]) == 4
    with pytest.raises(DcgmError) as caught:
        dcgmi.group_delete(2)
    assert str(caught.value) == (
        "dcgmi group -d 2 failed (exit 251, DCGM_ST_NOT_CONFIGURED): "
        "Error: Cannot destroy group 2. Return: The Group is not found."
    )


def test_group_with_an_unknown_gpu_fails(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {"gpus": [0, 1]})
    with pytest.raises(DcgmError, match=r"exit 255, DCGM_ST_BADPARAM.*add of GPU 7 into group 2"):
        dcgmi.group_create("x", [0, 7])
    with pytest.raises(InputError):
        dcgmi.group_create("bad name", [0])
    with pytest.raises(InputError):
        dcgmi.group_create("ok", [])


def test_job_statistics_life_cycle(tmp_path: Path) -> None:
    scenario = {
        "gpus": [0, 1, 2],
        "jobs": {
            "1234": {
                "slowdown_power_pct": 12.5,
                "slowdown_thermal_pct": "Not Supported",
                "gpus": {
                    "0": {
                        "energy_joules": 901234,
                        "power_avg_watts": 250.5,
                        "power_max_watts": 301.25,
                        "power_min_watts": 61.0,
                        "memory_max_bytes": 42949672960,
                        "sm_utilization_avg_pct": 87,
                        "sm_utilization_max_pct": 100,
                        "sm_utilization_min_pct": 0,
                        "ecc_double_bit_errors": 0,
                        "ecc_single_bit_errors": "Not Supported",
                        "pcie_replay_warnings": None,
                        "xid_offsets_seconds": [3725, 7200],
                        "processes": [
                            {"pid": 4242, "sm_utilization_avg_pct": 90, "memory_utilization_avg_pct": None}
                        ],
                        "overall_health": "warn",
                        "health_incidents": [["pcie", "warn"]],
                    },
                    "1": {"energy_joules": "Not Specified"},
                },
            }
        },
    }
    dcgmi = gateway(tmp_path, scenario)
    group = dcgmi.group_create("job1234", [0, 1])
    dcgmi.stats_watch(group, max_keep_age_seconds=86400)
    dcgmi.stats_start(group, "1234")
    running = dcgmi.stats_job("1234")
    assert running.error is None
    assert [g.gpu_id for g in running.gpus] == [0, 1]
    assert running.gpus[0].end_time_epoch_seconds is None  # "Still Running"
    assert running.gpus[0].execution_seconds is None
    with pytest.raises(DcgmError, match=r"DCGM_ST_DUPLICATE_KEY.*This Job Id is in use"):
        dcgmi.stats_start(group, "1234")
    dcgmi.stats_stop("1234")
    stats = dcgmi.stats_job("1234")
    assert stats.error is None
    assert stats.job == "1234"
    gpu0 = stats.gpu(0)
    assert gpu0 is not None
    assert gpu0.start_time_epoch_seconds is not None and gpu0.end_time_epoch_seconds is not None
    assert abs(gpu0.start_time_epoch_seconds - time.time()) < 3601
    assert gpu0.energy_joules == 901234
    assert (gpu0.power_avg_watts, gpu0.power_max_watts, gpu0.power_min_watts) == (250.5, 301.25, 61.0)
    assert gpu0.memory_max_bytes == 42949672960
    assert (gpu0.sm_utilization_avg_pct, gpu0.sm_utilization_max_pct) == (87, 100)
    assert gpu0.memory_utilization_avg_pct is None  # "N/A"
    assert gpu0.ecc_double_bit_errors == 0
    assert gpu0.ecc_single_bit_errors is None  # "Not Supported"
    assert gpu0.pcie_replay_warnings is None
    assert gpu0.xid_errors == 2
    assert gpu0.xid_offsets_seconds == (3725, 7200)
    (process,) = gpu0.processes
    assert (process.pid, process.kind, process.sm_utilization_avg_pct) == (4242, "compute", 90)
    assert process.memory_utilization_avg_pct is None  # "Not Found"
    assert gpu0.process_count == 1
    assert gpu0.overall_health == "warn"
    assert gpu0.health_incidents == (("pcie", "warn"),)
    gpu1 = stats.gpu(1)
    assert gpu1 is not None and gpu1.energy_joules is None and gpu1.process_count == 0
    assert stats.slowdown_power_pct == 12.5
    assert stats.slowdown_thermal_pct is None
    dcgmi.stats_remove("1234")
    with pytest.raises(DcgmError, match=r"exit 242, DCGM_ST_NO_DATA.*No data is available"):
        dcgmi.stats_job("1234")
    with pytest.raises(DcgmError, match="Job 1234 was not found"):
        dcgmi.stats_stop("1234")
    with pytest.raises(InputError):
        dcgmi.stats_start(group, "has space")


# ---------------------------------------------------------------------------------------------------------------
# broken dcgmi: garbage, truncation, non-zero exit, a missing binary, a hang
# ---------------------------------------------------------------------------------------------------------------


def test_garbage_output_becomes_errors_not_tracebacks(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {"broken": {"mode": "garbage"}})
    health = dcgmi.health()
    assert health.overall is None and health.error is not None and "no JSON" in health.error
    diag = dcgmi.diag(1)
    assert diag.overall is None and diag.error is not None and "no JSON" in diag.error
    with pytest.raises(DcgmError, match="printed no group id"):
        dcgmi.group_create("g", [0])


def test_garbage_job_statistics_are_data(tmp_path: Path) -> None:
    scenario: dict[str, Any] = {"broken": {"mode": "garbage", "commands": ["stats"]}}
    stats = gateway(tmp_path, scenario).stats_job("7")
    assert stats.gpus == ()
    assert stats.error is not None and stats.error.startswith("dcgmi stats: no GPU sections")


def test_truncated_output_is_an_error(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {"broken": {"mode": "truncated", "commands": ["health", "diag"]}})
    assert dcgmi.health().error is not None
    assert dcgmi.diag(1).overall is None


def test_truncated_job_statistics_keep_what_was_read(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {"gpus": [0], "broken": {"mode": "truncated", "commands": ["stats"]}})
    dcgmi.stats_start(0, "9")  # half of "Successfully started ..." is still exit 0
    stats = dcgmi.stats_job("9")  # cut in the middle of the only GPU section
    assert stats.gpus[0].gpu_id == 0
    assert stats.gpus[0].start_time_epoch_seconds is not None
    assert stats.error is not None and "GPU section(s) 0 cut short" in stats.error


def test_nonzero_exit(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {"broken": {"mode": "hostengine_down"}})
    expected = (
        "failed (exit 235, DCGM_ST_CONNECTION_NOT_VALID): "
        "Error: unable to establish a connection to the specified host: localhost; "
        "Error: Unable to connect to host engine. Host engine connection invalid/disconnected."
    )
    health = dcgmi.health()
    assert health.overall is None and health.error == "dcgmi health -c -j " + expected
    assert dcgmi.diag(1).overall == "pass"  # dcgmi diag falls back to an embedded host engine
    with pytest.raises(DcgmError) as caught:
        dcgmi.stats_stop("5")
    assert str(caught.value) == "dcgmi stats -x 5 " + expected
    assert isinstance(caught.value, SlurmgpuError)
    assert "\n" not in str(caught.value)


def test_other_exit_status_and_stderr(tmp_path: Path) -> None:
    scenario = {"broken": {"mode": "exit", "exit_code": 3, "output": ""}}
    with pytest.raises(DcgmError, match=r"failed \(exit 3\): no output"):
        gateway(tmp_path, scenario).group_delete(4)


def test_diag_that_could_not_run(tmp_path: Path) -> None:
    paused = "Error: Diagnostic could not be run while DCGM is paused.\n"  # Diag.cpp, text mode
    scenario = {"broken": {"mode": "exit", "exit_code": 256 - 54, "output": paused}}
    diag = gateway(tmp_path, scenario).diag(1)
    assert diag.overall is None
    assert (
        diag.error
        == "dcgmi diag -r 1 failed (exit 202): Error: Diagnostic could not be run while DCGM is paused."
    )


def test_missing_binary(tmp_path: Path) -> None:
    dcgmi = Dcgmi(tmp_path / "no" / "dcgmi")
    assert dcgmi.health().error == f"dcgmi not found at {tmp_path}/no/dcgmi (is DCGM installed?)"
    assert dcgmi.diag(1).error is not None
    with pytest.raises(DcgmError, match="not found"):
        dcgmi.group_create("g", [0])


def test_timeout_kills_a_hanging_dcgmi(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {}, sleep_seconds=30, timeout_seconds=0.5)
    started = time.monotonic()
    health = dcgmi.health()
    assert health.overall is None
    assert health.error == "dcgmi health did not answer within 0.5 s"
    with pytest.raises(DcgmError, match=r"did not answer within 0\.5 s"):
        dcgmi.stats_start(0, "1")
    assert time.monotonic() - started < 10


def test_a_hang_inside_dcgmi_times_out(tmp_path: Path) -> None:
    dcgmi = gateway(tmp_path, {"broken": {"mode": "hang", "sleep_seconds": 30}}, timeout_seconds=0.5)
    diag = dcgmi.diag(1, timeout_seconds=0.5)
    assert diag.error == "dcgmi diag did not answer within 0.5 s"


# ---------------------------------------------------------------------------------------------------------------
# the fake prints exactly what the real dcgmi printed
# ---------------------------------------------------------------------------------------------------------------


def test_fake_stats_table_is_the_real_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        start = 1639165236  # Fri Dec 10 19:40:36 2021 UTC; the run began 0.43 s after that second
        job = {
            "start_time_epoch_seconds": start + 0.43,
            "end_time_epoch_seconds": start + 48.0,
            "slowdown_power_pct": 0,
            "slowdown_thermal_pct": 0,
            "slowdown_sync_boost_pct": 0,
            "gpus": {
                "0": {
                    "energy_joules": 0,
                    "power_avg_watts": 37.8985,
                    "power_max_watts": 45.874,
                    "power_min_watts": 22.999,
                    "memory_max_bytes": 2628780032,
                    **{f"sm_clock_{k}_mhz": 1312 for k in ("avg", "max", "min")},
                    **{f"memory_clock_{k}_mhz": 877 for k in ("avg", "max", "min")},
                    **{f"sm_utilization_{k}_pct": 0 for k in ("avg", "max", "min")},
                    **{f"memory_utilization_{k}_pct": 0 for k in ("avg", "max", "min")},
                    "ecc_single_bit_errors": 0,
                    "ecc_double_bit_errors": 0,
                    "pcie_replay_warnings": 0,
                    "processes": [
                        {"pid": 10140, "sm_utilization_avg_pct": 6, "memory_utilization_avg_pct": 1}
                    ],
                }
            },
        }
        assert fake_dcgmi.render_stats_job("232", job, [0]) == STATS_UBER_PROF
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_fake_diag_json_is_the_real_one(tmp_path: Path) -> None:
    scenario = {
        "gpus": [0],
        "device_id": "2e12",
        "serial_numbers": {"0": "<<<NOT_SUPPORTED>>>"},
        "dcgm_version": "4.2.3",
        "driver_version": "580.82.09",
        "diag": {
            "tests": [
                {
                    "name": "software",
                    "gpus": {
                        "0": {
                            "status": "fail",
                            "warnings": [
                                {
                                    "warning": PERSISTENCE_WARNING,
                                    "error_id": 29,
                                    "error_category": 8,
                                    "error_severity": 5,
                                }
                            ],
                        }
                    },
                    "info": [SRAM_INFO],
                }
            ]
        },
    }
    out, err, status = run_fake(write_scenario(tmp_path, scenario), "diag", "-r", "1", "-j")
    assert (out, err, status) == (DIAG_DCGM4_GB10, "", 226)  # the GB10 run also exited 226


def test_fake_health_matches_dcgm_unit_test() -> None:
    assert fake_dcgmi.render_health(HEALTH_TEST_INCIDENTS, as_json=True) == HEALTH_JSON
    table = fake_dcgmi.render_health(HEALTH_TEST_INCIDENTS, as_json=False)
    for row in (  # the CHECKs of dcgmi/tests/HealthTests.cpp
        "| Overall Health            | Failure",
        "| -> 0                      | Warning",
        "| The car is red? Are you sure because that doesn't seem   |",
        " | like the color I ordered.                                |",
        "| -> 1                      | Failure",
        "|       -> Memory system    | Failure",
        "| Green can be emerald and beautiful, but there are        |",
        "| shades of green which are sure to disappoint.            |",
        "|       -> SM system        | Warning",
        "| The guards wear Kholin blue because otherwise they'd be  |",
        "| lame.                                                    |",
    ):
        assert row in table


def test_fake_group_and_stats_messages(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, {"gpus": [0, 1]})
    assert run_fake(path, "group", "-c", "test_group", "-a", "0,1") == (
        'Successfully created group "test_group" with a group ID of 2\nAdd to group operation successful.\n',
        "",
        0,
    )
    assert run_fake(path, "stats", "-g", "2", "-s", "77") == (
        "Successfully started recording stats for 77.\n",
        "",
        0,
    )
    assert run_fake(path, "group", "-d", "2") == ("Successfully removed group 2\n", "", 0)
    out, err, status = run_fake(path, "stats", "--bogus")
    assert (out, status) == ("", 254) and "parse the command line" in err


# ---------------------------------------------------------------------------------------------------------------
# pure parsers on the literal samples
# ---------------------------------------------------------------------------------------------------------------


def test_parse_real_stats_sample() -> None:
    stats = parse_stats_job(STATS_UBER_PROF)
    assert stats.error is None and stats.job == "232"
    (gpu,) = stats.gpus
    assert gpu.gpu_id == 0
    assert gpu.execution_seconds == 47.57
    assert gpu.end_time_epoch_seconds is not None and gpu.start_time_epoch_seconds is not None
    assert gpu.end_time_epoch_seconds - gpu.start_time_epoch_seconds == 48.0
    assert (gpu.power_avg_watts, gpu.power_max_watts, gpu.power_min_watts) == (37.8985, 45.874, 22.999)
    assert gpu.memory_max_bytes == 2628780032
    assert gpu.sm_clock_avg_mhz == 1312 and gpu.memory_clock_min_mhz == 877
    assert gpu.pcie_rx_avg_megabytes is None and gpu.pcie_tx_min_megabytes is None  # "N/A"
    assert gpu.energy_joules == 0 and gpu.xid_errors == 0 and gpu.xid_offsets_seconds == ()
    assert stats.slowdown_power_pct == 0.0 and stats.slowdown_reliability_pct is None  # "Not Supported"
    assert [(p.pid, p.sm_utilization_avg_pct, p.memory_utilization_avg_pct) for p in gpu.processes] == [
        (10140, 6, 1)
    ]
    assert gpu.overall_health == "pass"


def test_parse_summary_without_gpu_sections() -> None:
    stats = parse_stats_job(STATS_SUMMARY_ISSUE_93)
    assert stats.job == "952404"
    assert stats.gpus == ()
    assert stats.error == "dcgmi stats: a summary without per-GPU sections"


def test_parse_stats_cut_cells_and_odd_values() -> None:
    # ReplaceTag cuts a value wider than its 39-character cell and ends it with "..."
    text = STATS_UBER_PROF.replace(
        "| Power Usage (Watts)                | Avg: 37.8985, Max: 45.874, Min: 22.999  |",
        "| Power Usage (Watts)                | Avg: 208.353, Max: 304.634, Min: 4...   |",
    ).replace(
        "| Max GPU Memory Used (bytes)        | 2628780032 ",
        "| Max GPU Memory Used (bytes)        | lots       ",
    )
    stats = parse_stats_job(text)
    gpu = stats.gpus[0]
    assert (gpu.power_avg_watts, gpu.power_max_watts, gpu.power_min_watts) == (208.353, 304.634, None)
    assert gpu.memory_max_bytes is None
    assert stats.error == "dcgmi stats: Max GPU Memory Used (bytes): unexpected value 'lots'"


def test_parse_xid_times_use_total_minutes() -> None:
    rows = (
        "| Critical XID Errors                | 2                                       |\n"
        "| XID (Hr:Min:Sec since start)       | 0:00:59                                 |\n"
        "|                                    | 1:75:15                                 |\n"
    )
    text = STATS_UBER_PROF.replace(
        "| Critical XID Errors                | 0                                       |\n", rows
    )
    (gpu,) = parse_stats_job(text).gpus
    assert gpu.xid_errors == 2
    assert gpu.xid_offsets_seconds == (59, 75 * 60 + 15)


def test_parse_dcgm4_diag_sample() -> None:
    diag = parse_diag_json(DIAG_DCGM4_GB10)
    assert diag.error is None
    assert (diag.dcgm_version, diag.driver_version) == ("4.2.3", "580.82.09")
    assert diag.overall == "fail"
    (software,) = diag.tests
    assert (software.name, software.category, software.result) == ("software", "Deployment", "fail")
    assert software.gpus[0].warnings == (PERSISTENCE_WARNING,)
    assert software.info == (SRAM_INFO,)
    assert diag.gpu_ids == (0,)


def test_parse_dcgm3_diag_layout() -> None:
    diag = parse_diag_json(DIAG_DCGM3)
    assert diag.error is None
    assert (diag.dcgm_version, diag.driver_version) == ("3.3.5", "535.104.05")
    denylist, persistence, memory = diag.tests
    assert (denylist.result, denylist.gpus) == ("pass", ())  # one result for all GPUs
    assert persistence.result == "fail"
    (named,) = persistence.gpus  # a node-wide result that names the GPU of its error
    assert (named.gpu_id, named.result) == (1, "fail")
    assert named.warnings == persistence.warnings == ("Persistence mode for GPU 1 is disabled.",)
    assert [(g.gpu_id, g.result) for g in memory.gpus] == [(0, "pass"), (1, "fail")]
    assert memory.gpus[0].info == ("Allocated 95% of memory",)
    assert diag.failed_gpus() == (1,)


def test_parse_diag_runtime_error() -> None:
    # Diag.cpp HelperDisplayFailureMessage in JSON mode
    text = '{\n\t"DCGM Diagnostic" : \n\t{\n\t\t"runtime_error" : "Error: Diagnostic could not be run while DCGM is paused.\\n",\n\t\t"version" : "4.2.3"\n\t}\n}\n\n'
    diag = parse_diag_json(text)
    assert diag.overall is None
    assert diag.error == "dcgmi diag: Error: Diagnostic could not be run while DCGM is paused."
    assert diag.dcgm_version == "4.2.3"


def test_parse_health_sample() -> None:
    health = parse_health_json(HEALTH_JSON)
    assert health.error is None and health.overall == "fail"
    gpu0, gpu1 = health.gpus
    assert (gpu0.entity_id, gpu0.health) == (0, "warn")
    assert gpu0.incidents[0].message == HEALTH_TEST_INCIDENTS[0]["message"]
    assert [(i.system, i.health) for i in gpu1.incidents] == [("memory", "fail"), ("sm", "warn")]


def test_parse_health_odd_documents() -> None:
    assert parse_health_json("").error == "dcgmi health printed no JSON: 'no output'"
    assert (
        parse_health_json('{"header": ["Health Monitor Report"]}').error == "dcgmi health JSON has no 'body'"
    )
    odd = parse_health_json(
        '{"body": {"Overall Health": {"value": "Internal error"}, "GPU": {"children": {"x": {}, '
        '"2": {"value": "Warning", "children": {"Errors": {"children": {"Power system": {"value": "Warning"}}}}}}}}}'
    )
    assert odd.overall is None
    assert odd.error == "dcgmi health: overall health is 'Internal error'; bad GPU entity 'x'"
    assert odd.gpus[0].incidents[0].system == "power"


def test_parse_group_create() -> None:
    line = 'Successfully created group "test_group" with a group ID of 2\n'  # NVIDIA/DCGM test_dcgmi.py
    assert parse_group_create(line) == 2
    assert (
        parse_group_create('Successfully created group "a "b"" with a group ID of 17\nAdd to group ...\n')
        == 17
    )
    with pytest.raises(DcgmError):
        parse_group_create("Error: Cannot create group x. Return: Max limit reached for the object\n")


# ---------------------------------------------------------------------------------------------------------------
# properties: parse(render(x)) == x
# ---------------------------------------------------------------------------------------------------------------

words = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=12)
messages = st.lists(words, min_size=1, max_size=25).map(" ".join)


@given(messages)
def test_health_message_cut_and_joined_back(message: str) -> None:
    pieces = fake_dcgmi.split_health_message(message)
    assert all(len(p) <= 55 for p in pieces)
    assert " ".join(pieces) == message


incident = st.fixed_dictionaries(
    {
        "gpu": st.integers(0, 7),
        "system": st.sampled_from(list(fake_dcgmi.HEALTH_SYSTEM_LABELS)),
        "health": st.sampled_from(["warn", "fail"]),
        "message": messages,
    }
)


@given(st.lists(incident, max_size=12, unique_by=lambda i: (i["gpu"], i["system"])))
def test_health_round_trip(incidents: list[dict[str, Any]]) -> None:
    ordered = fake_dcgmi.health_incidents({"health": {"incidents": incidents}}, list(range(8)))
    health = parse_health_json(fake_dcgmi.render_health(ordered, as_json=True))
    assert health.error is None
    rank = {"warn": 1, "fail": 2}
    assert health.overall == max((i["health"] for i in incidents), key=rank.__getitem__, default="pass")
    expected = {}
    for item in incidents:
        expected.setdefault(item["gpu"], set()).add((item["system"], item["health"], item["message"]))
    got = {g.entity_id: {(i.system, i.health, i.message) for i in g.incidents} for g in health.gpus}
    assert got == expected
    for gpu in health.gpus:
        assert gpu.health == max((i.health or "fail" for i in gpu.incidents), key=rank.__getitem__)


DIAG_STATUSES = ["pass", "fail", "warn", "skip", "not_run"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from([n for n, _, _ in fake_dcgmi.DEFAULT_DIAG_TESTS]),
            st.lists(
                st.tuples(st.sampled_from(DIAG_STATUSES), st.lists(messages, max_size=2)),
                min_size=3,
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_diag_round_trip(tests: list[tuple[str, list[tuple[str, list[str]]]]]) -> None:
    scenario = {
        "gpus": [0, 1, 2],
        "diag": {
            "tests": [
                {
                    "name": name,
                    "level": 1,
                    "gpus": {str(g): {"status": s, "warnings": w} for g, (s, w) in enumerate(per_gpu)},
                }
                for name, per_gpu in tests
            ]
        },
    }
    text, status = fake_dcgmi.render_diag(scenario, 1)
    diag = parse_diag_json(text)
    assert diag.error is None
    shown = {"pass": "pass", "skip": "skip", "warn": "fail", "fail": "fail", "not_run": "not_run"}
    assert {t.name: [(g.gpu_id, g.result, g.warnings) for g in t.gpus] for t in diag.tests} == {
        name: [(g, shown[s], tuple(w) if s != "not_run" else ()) for g, (s, w) in enumerate(per_gpu)]
        for name, per_gpu in tests
    }
    any_failed = any(s in ("warn", "fail") for _, per_gpu in tests for s, _ in per_gpu)
    assert diag.overall == ("fail" if any_failed else "pass")
    assert status == (226 if any_failed else 0)


counts = st.one_of(st.none(), st.sampled_from(fake_dcgmi.BLANK_WORDS), st.integers(0, 10**15))
small = st.one_of(st.none(), st.integers(0, 100_000))
watts = st.one_of(st.none(), st.integers(0, 99_999).map(lambda c: c / 100))  # <= 6 significant digits
percent = st.one_of(
    st.none(), st.sampled_from(fake_dcgmi.BLANK_WORDS), st.integers(0, 10_000).map(lambda c: c / 100)
)
process = st.fixed_dictionaries(
    {
        "pid": st.integers(1, 4_194_304),
        "kind": st.sampled_from(["compute", "graphics"]),
        "sm_utilization_avg_pct": st.one_of(st.none(), st.integers(0, 100)),
        "memory_utilization_avg_pct": st.one_of(st.none(), st.integers(0, 100)),
    }
)
levels = st.sampled_from(["pass", "warn", "fail"])
SUMMARY_STEMS = [("sm_clock", "mhz"), ("memory_clock", "mhz"), ("sm_utilization", "pct"),
                 ("memory_utilization", "pct"), ("pcie_rx", "megabytes"), ("pcie_tx", "megabytes")]  # fmt: skip
INT_FIELDS = ["energy_joules", "memory_max_bytes", "ecc_single_bit_errors", "ecc_double_bit_errors",
              "pcie_replay_warnings"]  # fmt: skip
gpu_stats = st.fixed_dictionaries(
    {
        **{name: counts for name in INT_FIELDS},
        **{f"power_{k}_watts": watts for k in ("avg", "max", "min")},
        **{f"{stem}_{k}_{unit}": small for stem, unit in SUMMARY_STEMS for k in ("avg", "max", "min")},
        "xid_offsets_seconds": st.lists(st.integers(0, 10**6), max_size=3),
        "processes": st.lists(process, max_size=3),
        "overall_health": levels,
        "health_incidents": st.lists(
            st.tuples(st.sampled_from(list(fake_dcgmi.STATS_HEALTH_LABELS)), levels), max_size=2
        ),
    }
)


@settings(max_examples=60)
@given(
    st.integers(1_500_000_000, 1_800_000_000),
    st.one_of(st.none(), st.integers(0, 10**7)),
    st.lists(st.tuples(st.integers(0, 15), gpu_stats), min_size=1, max_size=3, unique_by=lambda t: t[0]),
    st.fixed_dictionaries({name: percent for _, name in fake_dcgmi._SLOWDOWN_FIELDS}),
)
def test_stats_round_trip(
    start: int, duration: int | None, gpus: list[tuple[int, dict[str, Any]]], slowdown: dict[str, Any]
) -> None:
    job = {
        "start_time_epoch_seconds": start,
        "end_time_epoch_seconds": None if duration is None else start + duration,
        "gpus": {str(g): s for g, s in gpus},
        **slowdown,
    }
    stats = parse_stats_job(fake_dcgmi.render_stats_job("job-1", job, [g for g, _ in gpus]))
    assert stats.error is None and stats.job == "job-1"

    def value(v: Any) -> Any:
        return None if v is None or isinstance(v, str) else v

    for name, v in slowdown.items():
        assert getattr(stats, name) == value(v)
    assert [g.gpu_id for g in stats.gpus] == [g for g, _ in gpus]
    for parsed, (_, source) in zip(stats.gpus, gpus, strict=True):
        assert parsed.start_time_epoch_seconds is not None
        assert parsed.start_time_epoch_seconds - start in (0, 3600, -3600)  # local time; DST folds aside
        if duration is None:
            assert parsed.end_time_epoch_seconds is None and parsed.execution_seconds is None
        else:
            assert parsed.execution_seconds == float(f"{float(duration):g}")
        for name in INT_FIELDS + [
            f.name for f in fields(parsed) if f.name.startswith(("power_", *dict(SUMMARY_STEMS)))
        ]:
            assert getattr(parsed, name) == value(source[name]), name
        assert parsed.xid_errors == len(source["xid_offsets_seconds"])
        assert parsed.xid_offsets_seconds == tuple(source["xid_offsets_seconds"])
        ordered = sorted(source["processes"], key=lambda p: p["kind"] != "compute")
        assert [
            (p.pid, p.kind, p.sm_utilization_avg_pct, p.memory_utilization_avg_pct) for p in parsed.processes
        ] == [
            (p["pid"], p["kind"], p["sm_utilization_avg_pct"], p["memory_utilization_avg_pct"])
            for p in ordered
        ]
        assert parsed.process_count == len(source["processes"])
        assert parsed.overall_health == source["overall_health"]
        assert parsed.health_incidents == tuple(source["health_incidents"])


def test_job_stats_value_is_frozen() -> None:
    stats = DcgmJobStats(job="1")
    with pytest.raises(AttributeError):
        stats.job = "2"  # type: ignore[misc]
