"""`lab verify`: the e2e suite (pytest + testinfra over SSH) run inside the lab namespace, then a pass/fail table."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.lab import netns
from kiln.lab.layout import NETNS, Lab
from kiln.project import ROOT as PROJECT

SUITE = sorted(str(p.relative_to(PROJECT)) for p in (PROJECT / "tests" / "e2e").glob("test_lab_*.py"))


def run_suite(report: Path, lab: Lab, files: list[str] | None = None, extra: list[str] | None = None) -> int:
    env = {**os.environ, "KILN_LAB": "1"}
    if lab.roles_file:
        env["KILN_LAB_ROLES"] = str(lab.roles_file)
    argv = [
        "ip",
        "netns",
        "exec",
        NETNS,
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        *(files or SUITE),
        *(extra or []),
    ]
    return subprocess.run(argv, cwd=PROJECT, env=env, check=False).returncode


def results(report: Path) -> list[tuple[str, str, str]]:
    """(test, outcome, first line of the failure) for each test case in a JUnit XML report."""
    rows = []
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, why = "pass", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "FAIL", "error": "ERROR", "skipped": "skip"}[tag]
                why = (found.get("message") or "").splitlines()[0][:110] if found.get("message") else ""
        rows.append((case.get("name", "?"), outcome, why))
    return rows


def table(rows: list[tuple[str, str, str]], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("check", "result", "why"):
        t.add_column(col)
    for name, outcome, why in rows:
        style = "green" if outcome == "pass" else "yellow" if outcome == "skip" else "red"
        t.add_row(escape(name), f"[{style}]{outcome}[/]", escape(why))
    return t


def verify(lab: Lab, checks: str = "") -> int:
    """The suite against the running lab; `checks`: only those whose names match this pytest -k expression (a
    check's name carries its hosts, e.g. test_hardening_baseline[web3], test_firewall_matrix[web1->app1:8080])."""
    if not netns.exists():
        print("the lab is down: ./inv lab up first", file=sys.stderr)
        return 1
    report = lab.root / "verify.xml"
    report.unlink(missing_ok=True)
    code = run_suite(report, lab, extra=["-k", checks] if checks else None)
    if not report.exists():
        return code or 1
    rows = results(report)
    passed = sum(1 for _, o, _ in rows if o == "pass")
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table(rows, f"kiln lab verify: {passed}/{len(rows)} passed"))
    return code
