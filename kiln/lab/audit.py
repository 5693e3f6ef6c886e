"""`lab audit`: Lynis (baked into every image) on every running host at once; each host's hardening_index and
its top suggestions. Goal: 85 or more on every role. Under TCG one audit takes about 10 minutes."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table

from kiln.fsutil import write_atomic
from kiln.lab import netns
from kiln.lab.chaos import ssh
from kiln.lab.layout import Lab
from kiln.lab.ssh import config_file
from kiln.run import CommandError

GOAL = 85
TOP = 5


def parse_report(text: str) -> tuple[int | None, list[str]]:
    """hardening_index and the suggestions (test id: text) from /var/log/lynis-report.dat."""
    index, suggestions = None, []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "hardening_index" and value.isdigit():
            index = int(value)
        elif key == "suggestion[]":
            test, text_, *_ = value.split("|") + ["", ""]
            suggestions.append(f"{test}: {text_}")
    return index, suggestions


def audit_host(lab: Lab, name: str) -> tuple[str, int | None, list[str], str]:
    try:
        ssh(
            lab,
            name,
            "lynis audit system --quick --no-colors --cronjob > /var/log/kiln-lynis.log 2>&1",
            timeout=3600,
            check=False,
        )
        index, suggestions = parse_report(ssh(lab, name, "cat /var/log/lynis-report.dat", timeout=60))
        return name, index, suggestions, ""
    except CommandError as e:
        return name, None, [], str(e).splitlines()[0]


def audit(lab: Lab, *, only: str = "") -> int:
    """Audit every host, or only the comma-separated hosts in `only` (e.g. one per role: lb1,web1,app1,db1)."""
    every = [h.name for h in lab.hosts]
    names = [n.strip() for n in only.split(",") if n.strip()] or every
    unknown = [n for n in names if n not in every]
    if unknown:
        print(f"lab audit: no host {', '.join(unknown)} among the hosts the lab boots", file=sys.stderr)
        return 1
    config_file(lab)  # the ssh_config every audit's SSH reads
    netns.enter()
    console = Console()
    console.print(f"lab audit: Lynis on {len(names)} hosts at once (about 10 min or more under TCG) ...")
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        found = list(pool.map(lambda name: audit_host(lab, name), names))
    table = Table(title=f"kiln lab audit (Lynis; goal >= {GOAL})", title_justify="left")
    for col in ("host", "role", "hardening index", f"top {TOP} suggestions"):
        table.add_column(col)
    record = {}
    for name, index, suggestions, error in found:
        role = lab.cluster.host(name).role
        shown = "[red]error[/]" if index is None else f"[{'green' if index >= GOAL else 'red'}]{index}[/]"
        table.add_row(name, role, shown, error or "\n".join(suggestions[:TOP]))
        record[name] = {"role": role, "hardening_index": index, "suggestions": suggestions, "error": error}
    console.print(table)
    write_atomic(lab.root / "audit.json", (json.dumps(record, indent=2) + "\n").encode())
    return 0 if all(i is not None and i >= GOAL for _, i, _, _ in found) else 1
