"""slurmgpu.frozen.build makes the same frozen dataclass the constructor makes, and refuses classes it cannot."""

from __future__ import annotations

import dataclasses

import pytest

from slurmgpu.collection.aggregate import JobGpuAggregate, Point
from slurmgpu.frozen import build
from slurmgpu.gpu.types import GpuReading


def test_built_reading_equals_constructed_and_stays_frozen() -> None:
    values = {
        "index": 3,
        "timestamp_epoch_seconds": 12.5,
        "minor": 1,
        "power_watts": 250.0,
        "failed_fields": ("x",),
    }
    built = build(GpuReading, values)
    assert built == GpuReading(**values)  # type: ignore[arg-type]
    assert built.status == "ok" and built.uuid is None  # defaults filled
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.power_watts = 1.0  # type: ignore[misc]


def test_built_aggregate_equals_constructed() -> None:
    values = {
        "job_id": 7,
        "node": "gn1",
        "minor": 0,
        "start_epoch_seconds": 1.0,
        "last_epoch_seconds": 2.0,
        "rounds": 4,
        "series": (Point(2.0, 50.0, 10, 100.0),),
    }
    assert build(JobGpuAggregate, values) == JobGpuAggregate(**values)  # type: ignore[arg-type]


def test_classes_build_cannot_make_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithFactory:
        items: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True)
    class WithPostInit:
        n: int

        def __post_init__(self) -> None:
            pass

    for cls in (WithFactory, WithPostInit):
        with pytest.raises(TypeError):
            build(cls, {})
