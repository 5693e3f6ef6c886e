"""Shape checks: the JSON Schema, with each violation turned into a readable Problem."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources
from typing import Any

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
def schema() -> dict[str, Any]:
    """roles.schema.json with each registered role's part filled in: its settings under $.roles, its host keys
    under $.hosts[], its name in the host role enum. docs/roles.schema.json is this, written out."""
    from kiln import roles

    doc = json.loads(resources.files("kiln.model").joinpath("roles.schema.json").read_text())
    host = doc["properties"]["hosts"]["items"]
    host["properties"]["role"]["enum"] = list(roles.names())
    for role in roles.all_roles():
        doc["properties"]["roles"]["properties"][role.name] = dict(role.settings_schema)
        host["properties"].update(role.host_keys)
    return doc


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(), format_checker=FORMAT_CHECKER)


def _path(parts: Iterable[str | int]) -> str:
    path = "$"
    for part in parts:
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

    def problem(code: str, message: str, expected: str = "", at: str = path) -> Problem:
        return Problem(line if at == path else marked.line_of(at), at, message, expected, file, code)

    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        for key in sorted(set(value) - set(allowed), key=str):
            yield problem("unknown-key", f"unknown key {key!r}", "one of: " + ", ".join(allowed), child_path(path, key))
    elif v == "required":
        for key in kw:
            if isinstance(value, dict) and key not in value:
                yield problem("missing-key", f"missing required key {key!r}")
    elif v == "type":
        yield problem("wrong-type", f"wrong type: got {_describe(value)}", f"expected {_TYPE_NAMES.get(kw, kw)}")
    elif v == "const" and path == "$.version":
        yield problem(
            "unsupported-version", f"unsupported version {_describe(value)}", f"this kiln supports version {kw}"
        )
    elif v in ("enum", "const"):
        choices = kw if v == "enum" else [kw]
        yield problem("not-allowed", f"{_describe(value)} is not allowed", "one of: " + ", ".join(map(str, choices)))
    elif v in ("pattern", "format"):
        kind = _kind_of(error)
        if kind:
            yield problem("malformed", f"{_describe(value)} is not {kind[0]}", kind[1])
        else:
            yield problem("malformed", f"{_describe(value)} is malformed", f"matching {error.schema.get('pattern')}")
    elif v == "minimum":
        yield problem("too-small", f"{value} is too small", f"at least {kw}")
    elif v == "maximum":
        yield problem("too-large", f"{value} is too large", f"at most {kw}")
    elif v == "minItems":
        yield problem("too-short", "the list is too short", f"at least {kw} item{'s' if kw != 1 else ''}")
    else:
        yield problem("schema", error.message)
