"""Linters are tests: ruff (lint and format) over everything Python in the project, and mypy over the code
(strict for the agent and the contract it shares with the server: pyproject.toml says which modules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT, capture_output=True, text=True, check=False)


def test_ruff_check():
    result = _run("ruff", "check", "--no-cache", str(PROJECT))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = _run("ruff", "format", "--check", "--no-cache", str(PROJECT))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    # incremental, its cache in the venv (untracked, made by ./inv): 23 s from nothing, a few seconds after, which
    # keeps ./inv test --quick under its 3 minutes on two cores
    result = _run("mypy", "--cache-dir", str(PROJECT / ".venv" / "mypy-cache"))
    assert result.returncode == 0, result.stdout + result.stderr
