"""Linters are tests: ruff over everything Python in the project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_ruff_check():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(PROJECT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
