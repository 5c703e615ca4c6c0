"""The simulator must be pynvml-shaped: every name it exports, and every call the gateway makes, exists in the
real nvidia-ml-py with the same value, class name and error code."""

from __future__ import annotations

import inspect
import re

import pynvml
import pytest
from tests.conftest import sim_node

from slurmgpu.gpu import nvml as gateway
from slurmgpu.sim import fake_pynvml


def test_constants_match_real_pynvml() -> None:
    for name in dir(fake_pynvml):
        if name.startswith(("NVML_", "nvmlClocks", "nvmlEventType")):
            assert hasattr(pynvml, name), name
            assert getattr(fake_pynvml, name) == getattr(pynvml, name), name


def test_error_classes_have_real_names_and_codes() -> None:
    for name in dir(fake_pynvml):
        if name.startswith("NVMLError_"):
            real = getattr(pynvml, name)
            fake = getattr(fake_pynvml, name)
            assert real.__name__ == fake.__name__
            assert real(0).value == fake(0).value, name  # both ignore the argument and carry their own code
    assert isinstance(
        fake_pynvml.NVMLError(fake_pynvml.NVML_ERROR_GPU_IS_LOST), fake_pynvml.NVMLError_GpuIsLost
    )
    assert str(fake_pynvml.NVMLError_NotSupported()) == str(pynvml.NVMLError_NotSupported())


def test_every_call_the_gateway_makes_exists_in_both(tmp_path) -> None:
    source = inspect.getsource(gateway)
    used = set(re.findall(r"nv\.(nvml\w+|NVML\w+)", source))
    assert len(used) > 25  # the scan found the calls
    module = fake_pynvml.make_module(sim_node(tmp_path))
    for name in used:
        assert hasattr(pynvml, name), f"{name} is not in nvidia-ml-py"
        assert hasattr(module, name), f"{name} is missing from the simulator"


@pytest.mark.parametrize(
    "name",
    [
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetAccountingStats",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetTemperature",
    ],
)
def test_signatures_take_the_same_leading_arguments(tmp_path, name) -> None:
    module = fake_pynvml.make_module(sim_node(tmp_path))
    real = list(inspect.signature(getattr(pynvml, name)).parameters)
    fake = list(inspect.signature(getattr(module, name)).parameters)
    assert len(fake) == len(real)


def test_calls_before_init_raise_uninitialized(tmp_path) -> None:
    module = fake_pynvml.make_module(sim_node(tmp_path))
    with pytest.raises(module.NVMLError_Uninitialized):
        module.nvmlDeviceGetCount()
    module.nvmlInit()
    assert module.nvmlDeviceGetCount() == 4
    module.nvmlShutdown()
    with pytest.raises(module.NVMLError_Uninitialized):
        module.nvmlDeviceGetCount()
