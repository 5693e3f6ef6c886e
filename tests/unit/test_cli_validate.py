"""`./inv validate` as an operator runs it: exit codes, one line per problem, JSON, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
INVALID = PROJECT / "tests" / "fixtures" / "roles" / "invalid"


def inv(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT)


def test_valid_file_exits_zero_with_a_summary():
    result = inv("validate")
    assert result.returncode == 0
    assert "valid: cluster foobar, 8 hosts (2 lb, 2 web, 1 app, 2 db, 1 mon)" in result.stdout


def test_every_problem_is_one_line_and_exit_is_one():
    roles = INVALID / "several_problems.yaml"
    result = inv("validate", "--roles", str(roles))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"{roles}:") for line in lines)
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("case", ["yaml_syntax_error", "empty_file", "not_a_mapping", "duplicate_yaml_key"])
def test_broken_files_never_print_a_traceback(case: str):
    result = inv("validate", "--roles", str(INVALID / f"{case}.yaml"))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.startswith(f"{INVALID / case}.yaml:")


def test_missing_file(tmp_path: Path):
    result = inv("validate", "--roles", str(tmp_path / "absent.yaml"))
    assert (result.returncode, result.stdout.strip()) == (
        1,
        f"{tmp_path}/absent.yaml:1: $: file not found (a roles.yaml file)",
    )


def test_json_output_for_tools():
    result = inv("validate", "--roles", str(INVALID / "bad_mac.yaml"), "--json")
    assert result.returncode == 1
    [problem] = json.loads(result.stdout)
    assert problem["path"] == "$.hosts[2].mac" and problem["line"] == 17 and "MAC" in problem["message"]


def test_render_of_an_invalid_file_reports_and_writes_nothing(tmp_path: Path):
    result = inv("render", "--roles", str(INVALID / "one_lb.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "lb host" in result.stderr
    assert not (tmp_path / "out").exists()
