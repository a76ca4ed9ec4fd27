"""Typed, validated construction of frozen config dataclasses from TOML tables.

Unknown keys and mistyped values are one-line errors naming the key, the bad value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from .errors import KdbenchError


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp, where: str) -> Any:
    """Check `value` against the annotation `tp` (int, float, bool, str, tuple[X, ...], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except KdbenchError as e:
                errors.append(str(e))
        raise KdbenchError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise KdbenchError(f"{where} must be a list of {_type_name(item_tp)}, got {value!r}")
        return tuple(coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise KdbenchError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KdbenchError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KdbenchError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise KdbenchError(f"{where} must be a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise KdbenchError(f"{where} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):  # a nested table (`[eval.certify]`)
        return from_table(tp, value, where)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise KdbenchError(f"{where} must be a table, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp!r} at {where}")


def unknown_key_error(where: str, key: str, valid) -> KdbenchError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return KdbenchError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")


def from_table(cls, table: Any, where: str):
    """Build the frozen dataclass `cls` from a TOML table, validating every key and type."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise KdbenchError(f"{where} must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise unknown_key_error(where, key, fields)
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise KdbenchError(f"{where} is missing required key(s): {', '.join(missing)}")
    return cls(**kwargs)


def check_params(params: dict, defaults: dict, where: str) -> dict:
    """Merge user params into a method's defaults; keys must exist and types must match the default's."""
    if not isinstance(params, dict):
        raise KdbenchError(f"{where} must be a table, got {params!r}")
    merged = dict(defaults)
    for key, value in params.items():
        if key not in defaults:
            raise unknown_key_error(where, key, defaults)
        default = defaults[key]
        tp = type(default) if default is not None else type(value)
        if isinstance(default, (list, tuple)):
            if not isinstance(value, (list, tuple)):
                raise KdbenchError(f"{where}.{key} must be a list, got {value!r}")
            merged[key] = list(value)
            continue
        merged[key] = coerce(value, tp, f"{where}.{key}")
    return merged
