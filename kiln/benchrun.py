"""Run every bench/*.py script; each prints its figures and writes bench/results/<name>.json (record())."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_all(*, quick: bool = False) -> int:
    failed = 0
    table = Table(title="kiln benchmarks")
    for col in ("benchmark", "figure", "value", "goal"):
        table.add_column(col)
    for script in sorted(BENCH.glob("*.py")):
        args = [sys.executable, str(script)] + (["--quick"] if quick else [])
        result = subprocess.run(args, check=False)
        if result.returncode:
            failed += 1
            table.add_row(script.stem, "failed", f"exit {result.returncode}", "")
            continue
        results = BENCH / "results" / f"{script.stem}.json"
        for figure in json.loads(results.read_text()).get("figures", []):
            table.add_row(
                script.stem, figure["name"], f"{figure['value']} {figure.get('unit', '')}", figure.get("goal", "")
            )
    Console().print(table)
    return 1 if failed else 0


def record(name: str, figures: list[dict[str, Any]], **about: Any) -> None:
    """Print a benchmark's figures ({name, value, unit[, goal]}) and write bench/results/NAME.json with them, when
    and where they were measured, and `about` (the run's parameters)."""
    for f in figures:
        goal = f" (goal {f['goal']})" if "goal" in f else ""
        print(f"{f['name']}: {f['value']} {f['unit']}{goal}")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        **about,
        "figures": figures,
    }
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
