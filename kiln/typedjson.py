"""Frozen dataclasses to and from JSON, and their JSON Schema, from the type hints alone. Standard library only:
the frozen agent imports it.

What the hints may be: str, int, bool, float, None, Literal[...] of strings, tuple[X, ...], X | None, another
frozen dataclass, and a union of dataclasses that each carry a `kind: Literal["..."]` field (a tagged union,
told apart by "kind"). A field's metadata may add `pattern` (a regular expression the whole string must match)
and `doc` (its description in the schema).

    decode(Bundle, data)   -> Bundle, or DecodeError("$.files[3].mode: ...")
    encode(value)          -> plain JSON data (dicts, lists, str, int, ...)
    json_schema(Bundle)    -> a draft 2020-12 JSON Schema document
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class DecodeError(ValueError):
    """A value does not fit its type; `path` is the JSON path of the first misfit ($.files[3].mode)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def pattern(regex: str, doc: str = "") -> dict[str, str]:
    """Field metadata: the whole string must match `regex` (no trailing newline: matched with fullmatch)."""
    return {"pattern": regex, "doc": doc}


def doc(text: str) -> dict[str, str]:
    return {"doc": text}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


@cache
def _fields(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    hints = _hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


@cache
def _regex(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _tag(cls: type) -> str | None:
    """The `kind` a member of a tagged union carries (its Literal default), or None."""
    for f, hint in _fields(cls):
        if f.name == "kind" and get_origin(hint) is Literal:
            return str(get_args(hint)[0])
    return None


def decode(cls: type[T], data: object, path: str = "$") -> T:
    """`data` (parsed JSON) as an instance of the dataclass `cls`; raise DecodeError at the first misfit."""
    return typing.cast(T, _decode(cls, data, path))


def _decode(hint: Any, value: object, path: str) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _decode_object(hint, value, path)
    origin = get_origin(hint)
    if _is_union(hint):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            if len(options) < len(get_args(hint)):
                return None
            raise DecodeError(path, "null is not allowed here")
        if len(options) == 1:
            return _decode(options[0], value, path)
        if not isinstance(value, dict):
            raise DecodeError(path, f"expected an object, got {_describe(value)}")
        by_kind = {_tag(o): o for o in options}
        kind = value.get("kind")
        if kind not in by_kind:
            kinds = ", ".join(sorted(str(k) for k in by_kind))
            raise DecodeError(f"{path}.kind", f"{_describe(kind)} is not a known kind (one of: {kinds})")
        return _decode_object(by_kind[kind], value, path)
    if origin is Literal:
        if value not in get_args(hint):
            allowed = ", ".join(repr(a) for a in get_args(hint))
            raise DecodeError(path, f"{_describe(value)} is not allowed (one of: {allowed})")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise DecodeError(path, f"expected a list, got {_describe(value)}")
        item = get_args(hint)[0]
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise DecodeError(path, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError(path, f"expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise DecodeError(path, f"expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise DecodeError(path, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"{path}: typedjson cannot decode {hint!r}")


def _decode_object(cls: type, value: object, path: str) -> Any:
    if not isinstance(value, dict):
        raise DecodeError(path, f"expected an object, got {_describe(value)}")
    known = {f.name for f, _ in _fields(cls)}
    unknown = sorted(k for k in value if k not in known)
    if unknown:
        raise DecodeError(f"{path}.{unknown[0]}", f"unknown key (expected one of: {', '.join(sorted(known))})")
    kwargs = {}
    for f, hint in _fields(cls):
        at = f"{path}.{f.name}"
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DecodeError(at, "missing")
            continue
        decoded = _decode(hint, value[f.name], at)
        regex = f.metadata.get("pattern")
        if regex and isinstance(decoded, str) and not _regex(regex).fullmatch(decoded):
            raise DecodeError(at, f"{_describe(decoded)} does not match {regex}")
        kwargs[f.name] = decoded
    try:
        return cls(**kwargs)
    except ValueError as e:  # a __post_init__ check of the dataclass itself
        raise DecodeError(path, str(e)) from None


_NAMES: dict[type, tuple[str, ...] | None] = {}


def _names(cls: type) -> tuple[str, ...] | None:
    """The field names of a dataclass type, None for any other type (cached: encode asks per value)."""
    try:
        return _NAMES[cls]
    except KeyError:
        names = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
        return _NAMES.setdefault(cls, names)


def encode(value: object) -> Any:
    """A dataclass (or tuple, or scalar) as plain JSON data; tuples become lists."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or kind is float or value is None:
        return value
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    names = _names(kind)
    if names is None:
        return value
    return {name: encode(getattr(value, name)) for name in names}


def json_schema(cls: type, *, title: str = "", schema_id: str = "") -> dict[str, Any]:
    """A draft 2020-12 JSON Schema for `cls`, every nested dataclass under $defs."""
    defs: dict[str, Any] = {}
    root = _schema(cls, defs)
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    if schema_id:
        out["$id"] = schema_id
    if title:
        out["title"] = title
    return {**out, **root, "$defs": dict(sorted(defs.items()))}


def _schema(hint: Any, defs: dict[str, Any], meta: typing.Mapping[str, str] | None = None) -> dict[str, Any]:
    meta = meta or {}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        name = hint.__name__
        if name not in defs:
            defs[name] = {}  # reserve: recursive references end here
            props = {f.name: _schema(h, defs, f.metadata) for f, h in _fields(hint)}
            required = [
                f.name
                for f, _ in _fields(hint)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
            entry: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
            if required:
                entry["required"] = required
            if hint.__doc__:
                entry["description"] = " ".join(hint.__doc__.split())
            defs[name] = entry
        out: dict[str, Any] = {"$ref": f"#/$defs/{name}"}
    elif _is_union(hint):
        options = [a for a in get_args(hint) if a is not type(None)]
        parts = [_schema(o, defs) for o in options]
        if len(options) < len(get_args(hint)):
            parts.append({"type": "null"})
        out = parts[0] if len(parts) == 1 else {"oneOf": parts}
    elif get_origin(hint) is Literal:
        values = list(get_args(hint))
        out = {"const": values[0]} if len(values) == 1 else {"enum": values}
    elif get_origin(hint) is tuple:
        out = {"type": "array", "items": _schema(get_args(hint)[0], defs)}
    else:
        out = {
            str: {"type": "string"},
            int: {"type": "integer"},
            bool: {"type": "boolean"},
            float: {"type": "number"},
        }[hint]
    if meta.get("pattern"):
        # JSON Schema's pattern searches the string: anchor it (decode() itself matches the whole string)
        out = {**out, "pattern": f"^(?:{meta['pattern']})$"}
    if meta.get("doc"):
        out = {**out, "description": meta["doc"]}
    return out
