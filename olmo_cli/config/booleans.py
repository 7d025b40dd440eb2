"""Booleans are not numbers: pydantic's lax mode takes `true` for 1 in an int or float field, so
`n_layers: true` (or `--set model.n_layers`, which upstream reads as true) would build one layer. The
config sections refuse a boolean wherever a field's type admits numbers but no boolean."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal


def _takes_bool(tp: Any) -> bool:
    if tp is bool or tp is Any:
        return True
    if typing.get_origin(tp) is Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType, Annotated):
        return any(_takes_bool(arg) for arg in typing.get_args(tp))
    return False


def _numbers_in(tp: Any) -> tuple[Any, ...]:
    """The number types (int, float) `tp` admits, outside containers."""
    if tp in (int, float):
        return (tp,)
    if typing.get_origin(tp) in (typing.Union, types.UnionType, Annotated):
        return tuple(t for arg in typing.get_args(tp) for t in _numbers_in(arg))
    return ()


def bool_for_number(value: Any, tp: Any) -> str | None:
    """What is wrong when `value` holds a boolean where `tp` wants a number (pydantic's lax mode takes
    true as 1, so `n_layers: true` would build one layer)."""
    if isinstance(value, bool):
        numbers = _numbers_in(tp)
        if numbers and not _takes_bool(tp):
            wanted = "an integer" if numbers == (int,) else "a number"
            return f"expected {wanted}, got the boolean {str(value).lower()}"
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        found = [bool_for_number(value, arg) for arg in args if typing.get_origin(arg) is not None]
        return found[0] if found and all(found) else None
    if isinstance(value, (list, tuple)) and origin in (list, tuple) and args:
        for i, item in enumerate(value):
            inner = args[0] if origin is list or args[-1] is Ellipsis else args[min(i, len(args) - 1)]
            problem = bool_for_number(item, inner)
            if problem:
                return f"{problem} (item {i})"
    if isinstance(value, dict) and origin is dict and len(args) == 2:
        for key, item in value.items():
            problem = bool_for_number(item, args[1])
            if problem:
                return f"{problem} (at {key})"
    return None
