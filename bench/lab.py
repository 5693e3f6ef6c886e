#!/usr/bin/env python3
"""The lab under TCG on this machine: power-on to joined per host and for the whole cluster, replication lag
under a write loop, failover seconds and requests lost per drill (./inv lab chaos), and per day-2 change (lab up
--roles on the running lab: --scale here, or ./inv test's) apply→converged seconds per host, failed requests, and
seconds until a new host takes traffic; with --roll web,lb, each host's `./inv roll` seconds and the requests that
failed meanwhile. Results: bench/results/lab.json.

Goal (issue 6): the whole cluster joined in under 10 min. A full run brings the lab up (--boot disk, or --boot pxe),
runs verify and the drills and takes the lab down again (--keep: leaves it up), about 45 min; --running does the
same on the lab that is up now. --recorded runs
nothing and reads the last lab run's records (./inv test runs the lab: disk boot, verify, chaos). --quick runs nothing
and leaves the last results in place (./inv bench --quick shows them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kiln.lab import change, chaos, lifecycle, netns, verify  # noqa: E402
from kiln.lab.layout import Lab  # noqa: E402
from kiln.lab.probe import request  # noqa: E402
from kiln.model import load_roles  # noqa: E402
from kiln.project import Project  # noqa: E402

RESULTS = HERE / "results" / "lab.json"


def replication_lag(lab: Lab, samples: int = 20) -> float:
    """Worst seconds from a note's POST through the VIP until the app reads it back (from the replica)."""
    ca = str(lab.secrets / "ca.pem")
    worst = 0.0
    for i in range(samples):
        text = f"bench-lag-{time.time_ns()}-{i}"
        posted = request(
            lab.vip, lab.cluster.domain, ca, "POST", "/api/notes", body=json.dumps({"text": text}).encode()
        )
        assert posted.status == 201, posted.body
        began = time.monotonic()
        while not any(
            n["text"] == text for n in request(lab.vip, lab.cluster.domain, ca, path="/api/notes").json()["notes"]
        ):
            if time.monotonic() - began > 30:
                raise TimeoutError("a note never reached the replica")
            time.sleep(0.05)
        worst = max(worst, time.monotonic() - began)
    return worst


def recorded(lab: Lab) -> list[dict[str, object]]:
    """Figures from the records a lab run leaves in state/lab/: boot.json (lab up), verify.xml, chaos.json,
    failover.json."""
    figures: list[dict[str, object]] = []
    boot = json.loads(lab.boot_record.read_text())
    for host, seconds in sorted(boot["joined_seconds"].items()):
        figures.append({"name": f"power-on to joined: {host}", "value": seconds, "unit": "s"})
    if boot["joined_seconds"]:
        figures.append(
            {
                "name": f"whole cluster joined ({boot['boot']})",
                "value": max(boot["joined_seconds"].values()),
                "unit": "s",
                "goal": "< 600 s",
            }
        )
    if (lab.root / "verify.xml").exists():
        rows = verify.results(lab.root / "verify.xml")
        figures.append(
            {"name": "lab verify", "value": f"{sum(o == 'pass' for _, o, _ in rows)}/{len(rows)} passed", "unit": ""}
        )
    drills = json.loads((lab.root / "chaos.json").read_text()) if (lab.root / "chaos.json").exists() else []
    if (lab.root / "failover.json").exists():
        drills += json.loads((lab.root / "failover.json").read_text())["drills"]
    for r in drills:
        met = "met" if r["goal_met"] else "missed"
        figures.append(
            {
                "name": f"drill: {r['drill']}",
                "value": r["measured"],
                "unit": "",
                "goal": f"{r['goal']} ({met})",
                "works": r["works"],
            }
        )
    for n, c in enumerate(_changes(lab), start=1):
        what = ", ".join([f"+{h}" for h in c.get("added", [])] + [f"-{h}" for h in c.get("removed", [])]) or "none"
        figures.append(
            {
                "name": f"day-2 change {n} ({what}): failed requests through the VIP",
                "value": f"{c['failed_requests']}/{c['requests']}",
                "unit": "",
                "goal": "0",
            }
        )
        for generation, hosts in sorted(c.get("host_seconds", {}).items()):
            for host, seconds in sorted(hosts.items()):
                figures.append(
                    {
                        "name": f"change {n}: apply to {host} running generation {generation}",
                        "value": seconds,
                        "unit": "s",
                    }
                )
        for host, seconds in sorted(c.get("joined_seconds", {}).items()):
            figures.append({"name": f"change {n}: power-on to joined: {host}", "value": seconds, "unit": "s"})
        for host, seconds in sorted(c.get("traffic_seconds", {}).items()):
            figures.append(
                {
                    "name": f"change {n}: {host} takes traffic after joining",
                    "value": seconds,
                    "unit": "s",
                    "goal": "< 60 s",
                }
            )
    return figures


def _changes(lab: Lab) -> list[dict]:
    try:
        return list(json.loads((lab.root / "changes.json").read_text()))
    except (FileNotFoundError, ValueError):
        return []


def scale(lab: Lab) -> int:
    """The reference day-2 drill on the running lab: web3 and app2 added, then web2 and app1 removed."""
    from rich.console import Console

    text = (HERE.parent / "roles.yaml").read_text()
    code = 0
    for name, roles in (
        ("scaled-out", change.roles_with(text, add=change.SCALE_OUT)),
        ("scaled-in", change.roles_with(text, add=change.SCALE_OUT, drop=change.SCALE_IN)),
    ):
        path = lab.root / f"roles-{name}.yaml"
        path.write_text(roles)
        code |= change.change(Lab(load_roles(path), roles_file=path), Console(), timeout=1200)
    return code


def roll(lab: Lab, roles: list[str]) -> tuple[int, list[dict[str, object]]]:
    """`./inv lab roll`'s drills for each of `roles` (kiln.lab.rolldrill): each host's roll seconds, and what each
    roll measured (failed requests through the VIP, the VIP's silence and moves, the image the hosts run)."""
    from kiln.lab.rolldrill import rolls

    code = rolls(lab, Project(), tuple(roles))
    figures: list[dict[str, object]] = []
    for record in json.loads((lab.root / "roll.json").read_text()):
        for host, seconds in record["seconds"].items():
            figures.append({"name": f"roll --role {record['role']}: {host}", "value": round(seconds), "unit": "s"})
        figures.append({"name": record["drill"], "value": record["measured"], "goal": record["goal"]})
    return code, figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run nothing; keep the last full run's results")
    parser.add_argument("--boot", default="disk", choices=("disk", "pxe"))
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards (e.g. for ./inv lab audit)")
    parser.add_argument("--running", action="store_true", help="measure, verify and drill the lab that is up now")
    parser.add_argument(
        "--scale", action="store_true", help="then scale out by web3 + app2 and in by web2 + app1 (day 2)"
    )
    parser.add_argument("--roll", default="", help="then roll these roles, comma-separated (e.g. web,lb)")
    parser.add_argument(
        "--recorded",
        action="store_true",
        help="run nothing: the last lab run's figures (e.g. ./inv test's) from state/lab/",
    )
    opts = parser.parse_args()
    if opts.quick:
        print(f"bench/lab.py: --quick runs no VMs; {RESULTS.name} holds the last full run")
        return 0 if RESULTS.exists() else 1
    lab = Lab(Project().cluster())
    code, extra = 0, []
    if not opts.recorded:
        try:
            if opts.running:
                netns.enter()  # lab up enters the lab's namespace; here nothing else did
            elif lifecycle.up(lab, opts.boot) != 0:
                return 1
            extra.append(
                {
                    "name": "replication lag, worst of 20 (POST to read via the VIP)",
                    "value": round(replication_lag(lab), 2),
                    "unit": "s",
                    "goal": "< 2 s",
                }
            )
            began = time.monotonic()
            code |= verify.verify(lab)
            extra.append({"name": "lab verify wall time", "value": round(time.monotonic() - began), "unit": "s"})
            began = time.monotonic()
            code |= chaos.chaos(lab)
            extra.append(
                {"name": "lab chaos wall time (all drills)", "value": round(time.monotonic() - began), "unit": "s"}
            )
            if opts.scale:
                began = time.monotonic()
                code |= scale(lab)
                extra.append(
                    {"name": "day-2 scale out and in, wall time", "value": round(time.monotonic() - began), "unit": "s"}
                )
            if opts.roll:
                rolled, figures = roll(lab, [r for r in opts.roll.split(",") if r])
                code |= rolled
                extra += figures
        finally:
            if not (opts.keep or opts.running):
                lifecycle.down(lab)
    figures = recorded(lab) + extra
    result = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "recorded": opts.recorded,
        "load_avg_1_5_15": os.getloadavg(),
        "figures": figures,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for f in figures:
        print(f"{f['name']}: {f['value']} {f.get('unit', '')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
