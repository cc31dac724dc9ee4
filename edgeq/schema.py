"""Typed records from JSON/TOML data: a dataclass built field by field, each value checked against
its annotation, so a wrong type in manifest.json or a target file is one clear error, not a
traceback three stages later."""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
OMIT = {"omit": True}  # field metadata: left out of the saved record while at its default (older files lack it)


class SchemaError(ValueError):
    """`where` names the field (e.g. artifacts[2].bytes); the message says what was expected."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)


def build(cls: type[T], data: Any, where: str = "", *, strict: bool = False) -> T:
    """`cls(**data)` with every value checked (and nested records built). Unknown keys are an error
    when `strict` (a hand-written file: a typo should not pass silently), else ignored (a newer
    edgeq's manifest)."""
    if not isinstance(data, dict):
        raise SchemaError(where, f"must be a table of fields, not {_kind(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if strict and unknown:
        raise SchemaError(where, f"unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = convert(hints[name], data[name], f"{where}.{name}" if where else name, strict)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(where, f"lacks the key {name!r}")
    return cls(**values)


def convert(tp: Any, value: Any, where: str, strict: bool = False) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own error says more (which field inside it is wrong)
            return convert(options[0], value, where, strict)
        for option in options:
            try:
                return convert(option, value, where, strict)
            except SchemaError:
                pass
        raise SchemaError(where, f"must be {describe(tp)}, not {_kind(value)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, strict=strict)
    if origin is list or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(where, f"must be a list, not {_kind(value)}")
        item = args[0] if args else Any
        items = [convert(item, v, f"{where}[{i}]", strict) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise SchemaError(where, f"must be a table with text keys, not {_kind(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: convert(item, v, f"{where}.{k}", strict) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(where, f"must be a finite number, not {_kind(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(where, f"must be a whole number, not {_kind(value)}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise SchemaError(where, f"must be {describe(tp)}, not {_kind(value)}")
        return value
    raise TypeError(f"schema.convert: unsupported annotation {tp!r} at {where}")  # a bug in edgeq, not input


def dump(obj: Any) -> Any:
    """A record as JSON-ready data (the inverse of `build`). A field whose metadata says "omit" is left
    out while it holds its default, so files written before the field existed read back unchanged."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("omit") and value == (f.default if f.default is not dataclasses.MISSING
                                                    else f.default_factory()):  # type: ignore[misc]
                continue
            out[f.name] = dump(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj


def describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "text", bool: "true or false", int: "a whole number", float: "a number"}.get(tp, str(tp))


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"

