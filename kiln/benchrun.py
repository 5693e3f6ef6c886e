"""Run every bench/*.py script; each prints its figures and writes bench/results/<name>.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
