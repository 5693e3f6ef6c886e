"""Each kind of bad roles.yaml, one fixture file per problem, with the problems it must produce."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kiln.model import InvalidRoles, load_roles, parse_roles

INVALID = Path(__file__).resolve().parent.parent / "fixtures" / "roles" / "invalid"
CASES = sorted(p.stem for p in INVALID.glob("*.yaml"))


def test_there_is_a_fixture_for_every_required_problem():
    required = {
        "yaml_syntax_error",
        "empty_file",
        "unknown_key_top",
        "unknown_key_host",
        "wrong_type",
        "bad_mac",
        "bad_ip",
        "bad_cidr",
        "duplicate_name",
        "duplicate_mac",
        "duplicate_ip",
        "ip_outside_subnet",
        "vip_outside_subnet",
        "vip_is_host_address",
        "undefined_role",
        "two_db_primaries",
        "no_db_primary",
        "one_lb",
        "equal_lb_priorities",
        "unsupported_version",
        # strings that would break or subvert a rendered config (the security review's cases first)
        "host_name_trailing_newline",
        "domain_tab",
        "database_mysql",
        "database_test",
        "static_root_variable",
        "static_root_dot_dot",
        "key_control_character",
        "disk_next_line",
        "provisioning_url_port",
        "provisioning_url_name",
        "provisioning_url_metacharacters",
        "mirror_metacharacters",
        "cluster_name_too_long",
        "domain_too_long",
    }
    assert required <= set(CASES)


def test_every_meaning_check_has_a_fixture_that_trips_it():
    """Each named check's code shows up in some fixture's expected problems: no check goes untested."""
    from kiln.model.meaning import all_checks

    seen = {p["code"] for case in CASES for p in json.loads((INVALID / f"{case}.expected.json").read_text())}
    codes = [code for code, _ in all_checks()]
    assert len(codes) == len(set(codes)), "codes are unique"
    assert not set(codes) - seen, f"checks no fixture trips: {sorted(set(codes) - seen)}"


@pytest.mark.parametrize("case", CASES)
def test_invalid_roles_report_every_problem_with_line_and_path(case: str):
    expected = json.loads((INVALID / f"{case}.expected.json").read_text())
    with pytest.raises(InvalidRoles) as raised:
        load_roles(INVALID / f"{case}.yaml")
    got = [{"line": p.line, "path": p.path, "message": p.message, "code": p.code} for p in raised.value.problems]
    assert got == expected
    for problem in raised.value.problems:
        assert problem.format().startswith(f"{INVALID / case}.yaml:{problem.line}: {problem.path}: ")


def test_missing_file_is_one_problem(tmp_path: Path):
    with pytest.raises(InvalidRoles) as raised:
        load_roles(tmp_path / "nope.yaml")
    [problem] = raised.value.problems
    assert problem.format() == f"{tmp_path / 'nope.yaml'}:1: $: file not found (a roles.yaml file)"


def test_binary_garbage_is_a_problem_not_a_traceback(tmp_path: Path):
    path = tmp_path / "roles.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidRoles) as raised:
        load_roles(path)
    assert "UTF-8" in raised.value.problems[0].message


@pytest.mark.parametrize(
    "text",
    ["!!python/object:os.system ls", "version: [1, {]", "a: &x [*x]", "? [a, b]\n: c", "\t- tab", "version: 1\n" * 3],
)
def test_hostile_yaml_never_raises_anything_but_invalid_roles(text: str):
    with pytest.raises(InvalidRoles):
        parse_roles(text)


def test_an_alias_bomb_is_stopped_quickly():
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(8):
        prev, cur = chr(97 + i), chr(98 + i)
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(InvalidRoles, match="alias bomb"):
        parse_roles("\n".join(levels) + "\n")


def test_a_replica_set_without_any_db_role_names_each_host(shipped_roles: Path):
    text = shipped_roles.read_text().replace(", db_role: primary", "").replace(", db_role: replica", "")
    with pytest.raises(InvalidRoles) as raised:
        parse_roles(text)
    messages = [(p.path, p.message) for p in raised.value.problems]
    assert ("$.hosts[5]", "db host without a db_role") in messages
    assert ("$.hosts[6]", "db host without a db_role") in messages


def _schema_input(case: str) -> object:
    """The fixture's data as the schema sees it (skips the fixtures that are not YAML at all)."""
    from kiln.model.yamlmarks import YamlSyntaxError, load_marked

    try:
        return load_marked((INVALID / f"{case}.yaml").read_text()).data
    except YamlSyntaxError:
        pytest.skip("not YAML: the schema never sees it")


def _published() -> jsonschema.Draft202012Validator:
    from kiln.model import shape

    return jsonschema.Draft202012Validator(shape.schema(), format_checker=shape.FORMAT_CHECKER)


@pytest.mark.parametrize("case", CASES)
def test_the_inlined_schema_finds_what_the_schema_with_refs_finds(case: str):
    # validation runs on the schema with its $refs inlined (for speed): it must reject exactly what the published
    # schema, refs and all, rejects, with the same messages at the same paths
    from kiln.model import shape

    data = _schema_input(case)

    def found(validator: jsonschema.Draft202012Validator) -> list[tuple[str, str, str]]:
        return sorted((str(list(e.absolute_path)), e.validator, e.message) for e in validator.iter_errors(data))

    assert found(shape._validator()) == found(_published())


@pytest.mark.parametrize("case", CASES)
def test_the_fast_verdict_never_passes_what_the_schema_refuses(case: str):
    # jsonschema-rs answers "valid?" first and the Python validator runs only on a no: a fixture it passed would
    # lose every shape problem the schema reports for it
    from kiln.model import shape

    data = _schema_input(case)
    refused = any(_published().iter_errors(data))
    try:
        passed = shape._verdict().is_valid(data)
    except ValueError:
        passed = False  # a value JSON has no type for: the Python validator is asked
    assert not (passed and refused)
