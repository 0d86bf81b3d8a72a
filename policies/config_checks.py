"""Type and finiteness checks for the config dataclasses, from their own annotations.

Every config's __post_init__ calls `check_fields(self)` before its range checks, so a wrong type or a NaN/inf is
refused with the class, the field and the expected type named (a range check such as `x > 0` lets NaN through,
and a string there raises a TypeError that names nothing). Fields typed with another dataclass, dict or Any are
left to the class's own conversion.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing

import numpy as np

_BASIC = (bool, int, float, str, type(None))


def _accepts(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, h) for h in typing.get_args(hint))
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(v, args[0]) for v in value)
        return len(args) == len(value) and all(_accepts(v, a) for v, a in zip(value, args)) if args else True
    if hint in (tuple, list):
        return isinstance(value, (tuple, list))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
                and math.isfinite(float(value)))
    if hint is str:
        return isinstance(value, str)
    return True  # nested configs, dicts, Any: converted and checked by the class itself


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin in (tuple, list):
        return "a list of " + ", ".join(_describe(a) for a in typing.get_args(hint) if a is not Ellipsis)
    if hint is float:
        return "a finite number"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def check_fields(obj) -> None:
    """Raise ValueError naming `Class.field` when a field's value does not fit its annotation."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints.get(f.name)
        if hint is None or typing.get_origin(hint) is typing.ClassVar:
            continue
        value = getattr(obj, f.name)
        if not _accepts(value, hint):
            raise ValueError(f"{type(obj).__name__}.{f.name} must be {_describe(hint)}, got {value!r}")
