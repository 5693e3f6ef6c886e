"""Shape checks: the JSON Schema, with each violation turned into a readable Problem."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources

import jsonschema

from kiln.model.problems import Problem
from kiln.model.yamlmarks import Marked, child_path

FORMAT_CHECKER = jsonschema.FormatChecker(formats=())


@FORMAT_CHECKER.checks("ipv4", raises=ValueError)
def _is_ipv4(value: object) -> bool:
    if not isinstance(value, str):
        return True
    ipaddress.IPv4Address(value)
    return True


@FORMAT_CHECKER.checks("ipv4-network", raises=ValueError)
def _is_ipv4_network(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "/" not in value:
        raise ValueError("no prefix length")
    ipaddress.IPv4Network(value, strict=True)
    return True


# What a pattern or format means, said the way an operator would: (what it is not, an example).
_KINDS = {
    "mac": ("a MAC address", "six hex pairs like 52:54:00:10:00:11"),
    "name": ("a valid name", "lower-case letters, digits and '-', starting with a letter"),
    "domain": ("a valid domain name", "e.g. www.foobar.com"),
    "ipv4": ("an IPv4 address", "dotted quad like 10.10.0.11"),
    "ipv4-network": ("an IPv4 network", "CIDR like 10.10.0.0/24, no host bits set"),
}

_TYPE_NAMES = {
    "integer": "an integer",
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "boolean": "true or false",
}


@cache
def schema() -> dict:
    text = resources.files("kiln.model").joinpath("roles.schema.json").read_text()
    return json.loads(text)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(), format_checker=FORMAT_CHECKER)


def _path(parts: object) -> str:
    path = "$"
    for part in parts:  # type: ignore[attr-defined]
        path = child_path(path, part)
    return path


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_of(error: jsonschema.ValidationError) -> tuple[str, str] | None:
    ref = error.schema.get("pattern") if isinstance(error.schema, dict) else None
    defs = schema()["$defs"]
    for name, spec in defs.items():
        if ref is not None and spec.get("pattern") == ref:
            return _KINDS.get(name)
    fmt = error.schema.get("format") if isinstance(error.schema, dict) else None
    return _KINDS.get(fmt) if fmt else None


def check_shape(marked: Marked, file: str) -> list[Problem]:
    return list(_problems(marked, file))


def _problems(marked: Marked, file: str) -> Iterator[Problem]:
    for error in _validator().iter_errors(marked.data):
        yield from _to_problems(error, marked, file)


def _to_problems(error: jsonschema.ValidationError, marked: Marked, file: str) -> Iterator[Problem]:
    path = _path(error.absolute_path)
    line = marked.line_of(path)
    v, kw, value = error.validator, error.validator_value, error.instance

    def problem(at: str, message: str, expected: str = "") -> Problem:
        return Problem(marked.line_of(at), at, message, expected, file)

    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        for key in sorted(set(value) - set(allowed), key=str):
            yield problem(child_path(path, key), f"unknown key {key!r}", "one of: " + ", ".join(allowed))
    elif v == "required":
        for key in kw:
            if isinstance(value, dict) and key not in value:
                yield problem(path, f"missing required key {key!r}")
    elif v == "type":
        yield Problem(line, path, f"wrong type: got {_describe(value)}", f"expected {_TYPE_NAMES.get(kw, kw)}", file)
    elif v == "const" and path == "$.version":
        yield Problem(line, path, f"unsupported version {_describe(value)}", f"this kiln supports version {kw}", file)
    elif v in ("enum", "const"):
        choices = kw if v == "enum" else [kw]
        yield Problem(line, path, f"{_describe(value)} is not allowed", "one of: " + ", ".join(map(str, choices)), file)
    elif v in ("pattern", "format"):
        kind = _kind_of(error)
        if kind:
            yield Problem(line, path, f"{_describe(value)} is not {kind[0]}", kind[1], file)
        else:
            yield Problem(
                line, path, f"{_describe(value)} is malformed", f"matching {error.schema.get('pattern')}", file
            )
    elif v == "minimum":
        yield Problem(line, path, f"{value} is too small", f"at least {kw}", file)
    elif v == "maximum":
        yield Problem(line, path, f"{value} is too large", f"at most {kw}", file)
    elif v == "minItems":
        yield Problem(line, path, "the list is too short", f"at least {kw} item{'s' if kw != 1 else ''}", file)
    else:
        yield Problem(line, path, error.message, "", file)
