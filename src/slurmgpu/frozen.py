"""Building frozen dataclasses on hot paths.

A frozen dataclass's generated __init__ sets every field through object.__setattr__ (it must get past the class's
own __setattr__, which raises). For the records the node agent makes every round -- a GpuReading of ~40 fields per
GPU, a JobGpuAggregate per job GPU -- that was a measurable share of the agent's cost per round (bench/README.md).
`build` fills the new instance's __dict__ directly, as copy.copy does; the object is the same frozen dataclass, equal
to the one the constructor makes (tests/unit/test_frozen.py). Only for classes without __post_init__ or __slots__.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


_DEFAULTS: dict[type, dict[str, Any]] = {}


def _defaults(cls: type) -> dict[str, Any]:
    known = _DEFAULTS.get(cls)
    if known is not None:
        return known
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        raise TypeError(f"{cls.__name__}: build() needs a plain dataclass")
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: build() cannot call default factories")
    _DEFAULTS[cls] = out
    return out


def build(cls: type[T], values: dict[str, Any]) -> T:
    """cls(**values), for `values` holding every field that has no default, and only fields of cls."""
    obj: T = object.__new__(cls)
    obj.__dict__.update(_defaults(cls))
    obj.__dict__.update(values)
    return obj
