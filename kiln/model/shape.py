"""Shape checks: the JSON Schema, with each violation turned into a readable Problem, and one check every string
gets, in a value or a key: no control character."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import resources
from typing import Any, cast

import jsonschema
import jsonschema_rs

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


@FORMAT_CHECKER.checks("ipv4-interface", raises=ValueError)
def _is_ipv4_interface(value: object) -> bool:
    """An address on an interface with its network's prefix length: 10.20.0.5/24 (host bits set, unlike a CIDR)."""
    if not isinstance(value, str):
        return True
    if "/" not in value:
        raise ValueError("no prefix length")
    address = ipaddress.IPv4Interface(value)
    if address.network.prefixlen == 0:
        raise ValueError("prefix length 0")
    return True


# What a pattern or format means, said the way an operator would: (what it is not, an example).
_KINDS = {
    "mac": ("a MAC address", "six hex pairs like 52:54:00:10:00:11"),
    "name": ("a valid name", "lower-case letters, digits and '-', starting with a letter, not ending with '-'"),
    "domain": ("a valid domain name", "e.g. www.foobar.com"),
    "ipv4": ("an IPv4 address", "dotted quad like 10.10.0.11"),
    "ipv4-network": ("an IPv4 network", "CIDR like 10.10.0.0/24, no host bits set"),
    "ipv4-interface": ("an IPv4 address with its prefix length", "like 10.20.0.5/24"),
    "path": (
        "a safe absolute path",
        "'/'-separated letters, digits, '.', '_' and '-' like /srv/www, no '.' or '..' component",
    ),
    "server_url": (
        "an https URL of an IPv4 address",
        "like https://10.10.0.1:8443: agents talk to the server only over TLS; a port 1..65535, a path of letters,"
        " digits and . _ ~ + -",
    ),
    "account": (
        "a valid account name",
        "a lower-case letter, then lower-case letters, digits, '_' and '-', at most 32 characters",
    ),
    "ssh_key": (
        "an OpenSSH public key line",
        "TYPE BASE64 [comment] on one line, e.g. 'ssh-ed25519 AAAAC3Nz... alice@laptop', the .pub file's content;"
        " no options such as command= or from=",
    ),
    "alert_receiver": (
        "'provisioning' or an https URL",
        "like https://alerts.example.org/kiln: a port 1..65535, a path of letters, digits and . _ ~ + -; no user,"
        " query or fragment (a credential belongs in secrets/)",
    ),
    "device": ("a disk rule or a device name", "a mapping such as {serial: S4EVNX0R123456}, or /dev/sda"),
    "size": ("a size", "digits then M, G or T (MiB, GiB, TiB), like 500G"),
    "disk_text": (
        "a disk's model, serial, WWN or by-path name",
        "as lsblk prints it: no quote, no space at either end",
    ),
    "secret_name": (
        "a file name under secrets/",
        "letters, digits, '.', '_' and '-', a letter or digit first, at most 64 characters, like bmc_admin",
    ),
    "bmc_address": (
        "a BMC address",
        "ipmi: HOST or HOST:PORT like 10.0.9.11; redfish: an http(s) URL like https://10.0.9.11 (no path)",
    ),
    "mirror": (
        "'auto' or an http(s) URL",
        "like http://deb.debian.org/debian: a port 1..65535, a path of letters, digits and . _ ~ + -",
    ),
}

# What no string in roles.yaml may hold, in a value or a key: the C0 controls (tab, line feed, carriage return...),
# DEL and the C1 controls (NEL among them). Every value ends up in a config file, a command line or the iPXE
# kernel line, where one of these ends a line or an argument. One generic check, not a pattern per field, so a
# field added later is covered too. It runs here in Python: the same rule as a recursive schema keyword would more
# than double the time a 10,000-host file takes to validate.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_PRINTABLE = "printable characters only: no tab, line break or other control character"
_CONTROL_NAMES = {"\t": "a tab", "\n": "a line feed", "\r": "a carriage return"}

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
        settings = dict(role.settings_schema)
        settings["properties"] = {**settings.get("properties", {}), "access": _role_access(role.name)}
        doc["properties"]["roles"]["properties"][role.name] = settings
        host["properties"].update(role.host_keys)
    return doc


def _role_access(role: str) -> dict[str, Any]:
    """roles.<role>.access: every role may add keys for its own hosts (kiln/model/access.py)."""
    return {
        "description": f"Operator access to the {role} hosts only.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "ssh_keys": {
                "description": f"Public key lines the admin account accepts on {role} hosts, besides access.ssh_keys.",
                "type": "array",
                "items": {"$ref": "#/$defs/ssh_key"},
                "default": [],
            }
        },
    }


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_inlined(schema()), format_checker=FORMAT_CHECKER)


@cache
def _verdict() -> jsonschema_rs.Validator:
    """The same schema and formats in jsonschema-rs, which only answers valid or not: a tenth of the time on a
    10,000-host file. The Python validator runs only when there is something to explain."""
    return jsonschema_rs.validator_for(
        schema(),
        formats={
            "ipv4": _format_holds(_is_ipv4),
            "ipv4-network": _format_holds(_is_ipv4_network),
            "ipv4-interface": _format_holds(_is_ipv4_interface),
        },
        validate_formats=True,
    )


def _format_holds(check: Callable[[object], bool]) -> Callable[[object], bool]:
    def holds(value: object) -> bool:
        try:
            return check(value)
        except ValueError:
            return False

    return holds


def _inlined(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with each local `$ref` to a $defs entry replaced by that entry (merged with its sibling keywords):
    resolving a $ref costs jsonschema a lookup per value, about 40 % of validating a 10,000-host file. The
    result validates the same: the $defs do not refer to each other, and a $ref whose siblings repeat one of
    its target's keywords is left as it is."""
    defs = doc.get("$defs", {})

    def walk(node: object) -> object:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: walk(value) for key, value in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
            target, siblings = defs[ref[8:]], {k: v for k, v in out.items() if k != "$ref"}
            if "$ref" not in target and not siblings.keys() & target.keys():
                return {**target, **siblings}
        return out

    return cast(dict[str, Any], walk(doc))


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
    controls = [
        Problem(marked.line_of(path), path, message, _PRINTABLE, file, "control-character")
        for path, message in _control_characters(marked.data, "$")
    ]
    # a value holding a control character is reported for that alone: the pattern it also fails says nothing more
    held = {p.path for p in controls}
    return controls + [p for p in _problems(marked, file) if p.path not in held]


def _held(text: str) -> str:
    """The first control character in `text`, named the way an operator would ("" when it holds none)."""
    found = CONTROL.search(text)
    if not found:
        return ""
    c = found.group()
    return f"{_CONTROL_NAMES.get(c, 'a control character')} (U+{ord(c):04X})"


def _control_characters(value: object, path: str) -> Iterator[tuple[str, str]]:
    """(path, message) for every string value and key of the document holding a control character."""
    if isinstance(value, str):
        if held := _held(value):
            yield path, f"{_describe(value)} holds {held}"
    elif isinstance(value, dict):
        for key, item in value.items():
            child = child_path(path, key)
            if isinstance(key, str) and (held := _held(key)):
                yield child, f"the key {key!r} holds {held}"
            yield from _control_characters(item, child)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _control_characters(item, child_path(path, i))


def _problems(marked: Marked, file: str) -> Iterator[Problem]:
    try:
        if _verdict().is_valid(marked.data):
            return
    except ValueError:  # a value JSON has no type for (a YAML date, a non-string key): the Python validator says so
        pass
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
        kinds: list[str] = kw if isinstance(kw, list) else [kw]
        expected = " or ".join(_TYPE_NAMES.get(k) or k for k in kinds)
        yield problem("wrong-type", f"wrong type: got {_describe(value)}", f"expected {expected}")
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
    elif v == "maxLength":
        yield problem("too-long", f"{_describe(value)} is too long", f"at most {kw} characters")
    elif v == "minProperties":
        yield problem("empty", "an empty mapping", "at least one of its keys, or leave it out for the default")
    elif v == "minItems":
        yield problem("too-short", "the list is too short", f"at least {kw} item{'s' if kw != 1 else ''}")
    else:
        yield problem("schema", error.message)
