"""Every string roles.yaml admits is whole and inert: no control character in any value or key, no trailing newline
slipping through a pattern's `$`, nothing a config file or a command line would read as syntax."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.model import InvalidRoles, parse_roles, schema
from kiln.model.shape import CONTROL
from kiln.model.yamlmarks import child_path

SHIPPED: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles.yaml").read_text())
CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]
# what a config file or a command line reads as syntax; no field admits any of them
METACHARACTERS = list(" '\"`$;{}\\#|&<>*?()[]!,=%@^")
FUZZ = settings(max_examples=100, deadline=None, database=None)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _yaml(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False)


def _patterns(node: object, where: str = "") -> Iterator[tuple[str, str]]:
    """(where in the schema, pattern) of every pattern, the role modules' parts included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield where, value
            else:
                yield from _patterns(value, f"{where}/{key}".replace("/properties/", "/"))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _patterns(item, f"{where}/{i}")


PATTERNS = dict(_patterns(schema()))


def _strings(node: object, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(where, value) of every string value in a document."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, (*path, i))


def _mappings(node: object, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(node, dict):
        yield path
        for key, value in node.items():
            yield from _mappings(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _mappings(value, (*path, i))


def _reference() -> dict[str, Any]:
    """The shipped roles.yaml with every optional string spelt out, so each is fuzzed too."""
    doc = copy.deepcopy(SHIPPED)
    for host in doc["hosts"]:
        host["disk"] = "/dev/vda"
    doc["hosts"][0]["disk"] = {
        "min_size": "1G",
        "max_size": "2T",
        "model": "SAMSUNG MZ7*",
        "serial": "S4EVNX0R123456",
        "wwn": "0x5002538e40a1b2c3",
        "path": "pci-0000:00:1f.2-ata-1",
    }
    return doc


STRINGS = list(_strings(_reference()))
# A disk rule's model, serial, WWN and by-path name are compared on the server with what the installer saw and never
# reach a config file or a command line: a model has spaces, a glob has * and [ ]. Only quotes are refused there.
INERT = [(where, value) for where, value in STRINGS if where[-2:-1] != ("disk",)]


def _json_path(path: tuple[str | int, ...]) -> str:
    out = "$"
    for part in path:
        out = child_path(out, part)
    return out


def _set(doc: dict[str, Any], path: tuple[str | int, ...], value: object) -> None:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRoles) as raised:
        parse_roles(_yaml(doc))
    return [(p.path, p.code) for p in raised.value.problems]


def _about(path: str, problems: list[tuple[str, str]]) -> list[str]:
    """The codes of the problems at `path` (a changed value may also trip a meaning check elsewhere: tier-needs)."""
    return [code for at, code in problems if at == path]


def test_the_reference_document_is_valid():
    parse_roles(_yaml(_reference()))


@pytest.mark.parametrize("pattern", PATTERNS.values(), ids=PATTERNS.keys())
@settings(max_examples=10, deadline=None, database=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_pattern_matches_whole_strings_only(pattern: str, data: st.DataObject):
    """Python's `$` (jsonschema runs re.search) also matches before a final newline: each pattern refuses that."""
    assert pattern.startswith("^") and pattern.endswith("$(?!\\n)"), "anchor it: see roles.schema.json's $comment"
    # a leading length lookahead (the domain's) makes Hypothesis filter most drafts: draw without it, then keep
    # only what the whole pattern admits
    unbounded = re.sub(r"^\^\(\?=[^()]*\)", "^", pattern)
    admitted = data.draw(st.from_regex(unbounded, fullmatch=True).filter(lambda s: re.search(pattern, s)))
    assert re.search(pattern, admitted)
    assert not re.search(pattern, admitted + "\n")


@pytest.mark.parametrize(
    "where,value",
    [
        (("hosts", 3, "name"), "web1\n"),
        (("cluster", "domain"), "www.foobar.com\n"),
        (("roles", "web", "static_root"), "/$http_x_root"),
        (("roles", "web", "static_root"), "/srv/../etc"),
        (("provisioning", "url"), "https://10.10.0.1:8443\n"),
        (("provisioning", "url"), "https://10.10.0.1:99999"),
        (("image", "mirror"), "http://deb.debian.org/debian;x"),
        (("roles", "db", "database"), "app\n"),
    ],
)
def test_the_schema_alone_refuses_them(where: tuple[str | int, ...], value: str):
    """For any other tool validating against the schema (an editor, a CI job): no kiln code needed."""
    doc = _reference()
    _set(doc, where, value)
    validator = jsonschema.Draft202012Validator(schema())
    assert [list(e.absolute_path) for e in validator.iter_errors(doc)] == [list(where)]


@FUZZ
@given(data=st.data())
def test_a_control_character_anywhere_in_a_value_is_refused(data: st.DataObject):
    where, value = data.draw(st.sampled_from(STRINGS))
    at = data.draw(st.integers(0, len(value)))
    bad = value[:at] + data.draw(st.sampled_from(CONTROLS)) + value[at:]
    doc = _reference()
    _set(doc, where, bad)
    assert _about(_json_path(where), _problems(doc)) == ["control-character"]


@FUZZ
@given(data=st.data())
def test_any_text_holding_a_control_character_is_refused_in_any_field(data: st.DataObject):
    where, _ = data.draw(st.sampled_from(STRINGS))
    text = data.draw(st.text(min_size=1).filter(CONTROL.search))
    doc = _reference()
    _set(doc, where, text)
    assert _about(_json_path(where), _problems(doc)) == ["control-character"]


@FUZZ
@given(data=st.data())
def test_a_control_character_in_a_key_is_refused(data: st.DataObject):
    where = data.draw(st.sampled_from(list(_mappings(_reference()))))
    key = data.draw(st.text(min_size=1).filter(CONTROL.search))
    doc = _reference()
    node: Any = doc
    for part in where:
        node = node[part]
    node[key] = "x"
    assert _about(_json_path((*where, key)), _problems(doc)) == ["control-character"]


@FUZZ
@given(data=st.data())
def test_a_metacharacter_anywhere_in_a_value_is_refused(data: st.DataObject):
    where, value = data.draw(st.sampled_from(INERT))
    at = data.draw(st.integers(0, len(value)))
    bad = value[:at] + data.draw(st.sampled_from(METACHARACTERS)) + value[at:]
    doc = _reference()
    _set(doc, where, bad)
    assert _about(_json_path(where), _problems(doc)), f"{bad!r} at {_json_path(where)} was admitted"


@pytest.mark.parametrize("name", ["mysql", "MySQL", "information_schema", "PERFORMANCE_SCHEMA", "sys", "test", "TeSt"])
def test_a_mariadb_system_schema_or_test_is_no_database_name(name: str):
    doc = _reference()
    doc["roles"]["db"]["database"] = name
    assert _problems(doc) == [("$.roles.db.database", "db-reserved-database")]


@pytest.mark.parametrize("name", ["app", "foobar", "testing", "test_app", "mysql_app", "system", "Sys2"])
def test_names_that_only_look_like_one_are_fine(name: str):
    doc = _reference()
    doc["roles"]["db"]["database"] = name
    parse_roles(_yaml(doc))


URL, MIRROR, ROOT = ("provisioning", "url"), ("image", "mirror"), ("roles", "web", "static_root")
ACCEPTED = [
    (URL, "https://10.10.0.1:8443"),
    (URL, "https://192.168.1.254"),
    (URL, "https://10.10.0.1:65535/kiln/"),
    (MIRROR, "auto"),
    (MIRROR, "http://deb.debian.org/debian"),
    (MIRROR, "https://mirror.example:8080/debian/"),
    (MIRROR, "http://10.0.0.5/~apt/debian+extra"),
    (ROOT, "/srv/www/"),
    (ROOT, "/var/www/.well-known"),
    (ROOT, "/srv/a-b_c.d/E9"),
]
REFUSED = [
    (URL, "https://10.10.0.1:0"),
    (URL, "https://10.10.0.1:65536"),
    (URL, "https://010.10.0.1:8443"),
    (URL, "https://256.10.0.1"),
    (URL, "https://kiln.example:8443"),  # the firewall names the host: nft would resolve a name at boot
    (URL, "https://user@10.10.0.1:8443"),
    (URL, "https://10.10.0.1:8443/?a=b"),
    (URL, "https://10.10.0.1:8443/#x"),
    (URL, "ftp://10.10.0.1"),
    (URL, "http://10.10.0.1:8443"),  # agents would never find a plain-HTTP API: the server has none
    (MIRROR, "Auto"),
    (MIRROR, "http://999.1.1.1/debian"),
    (MIRROR, "http://-deb.example/debian"),
    (MIRROR, "http://deb.debian.org/debian\\"),
    (ROOT, "/"),
    (ROOT, "srv/www"),
    (ROOT, "/srv//www"),
    (ROOT, "/srv/./www"),
    (ROOT, "/srv/www/.."),
    (ROOT, "/srv/w w"),
    (ROOT, "/srv/{x}"),
]


@pytest.mark.parametrize("where,value", ACCEPTED, ids=[v for _, v in ACCEPTED])
def test_urls_and_paths_a_cluster_uses_are_accepted(where: tuple[str, ...], value: str):
    doc = _reference()
    _set(doc, where, value)
    parse_roles(_yaml(doc))


@pytest.mark.parametrize("where,value", REFUSED, ids=[v for _, v in REFUSED])
def test_urls_and_paths_that_would_break_or_subvert_a_config_are_refused(where: tuple[str, ...], value: str):
    doc = _reference()
    _set(doc, where, value)
    assert _problems(doc) == [(_json_path(where), "malformed")]
