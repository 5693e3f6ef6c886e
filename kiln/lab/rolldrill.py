"""The roll drill (issue 17 item 4), for the shared lab boot: `./inv roll --role ROLE --lab` while chaos's request
and write loops run through the VIP; what it measured as a chaos Result (per-host roll times from state/roll.json,
failed requests, the longest outage). Not wired into `lab chaos` or tests/e2e yet: it reinstalls hosts, so it runs
where the lab's timeline has room for it (after `lab verify`, before day 2's changes)."""

from __future__ import annotations

import time

from kiln.lab import netns
from kiln.lab.chaos import Loops, Result
from kiln.lab.layout import Lab
from kiln.project import Project
from kiln.roll import cli as roll_cli
from kiln.roll import state


def drill_roll(lab: Lab, project: Project, role: str = "web") -> Result:
    """Roll ROLE in the lab under the request loop. `works`: the roll exited 0; `goal_met`: no request failed."""
    netns.enter()  # before the loops start: their threads must send from inside the lab's namespace
    loops = Loops(lab)
    loops.start()
    time.sleep(3)
    since = time.monotonic()
    try:
        with loops.probe_vip():
            code = roll_cli.roll(project, role, lab=True)
    finally:
        until = time.monotonic()
        loops.stop.set()
    loops.settle(until)  # a request still in flight counts once it has its answer or its failure
    outage, failed, total = loops.failed_seconds(since, until)
    silent = loops.vip_silent(since, until)
    run = state.load(project.state / "roll.json")
    times = ", ".join(f"{h} {r.seconds:.0f} s" for h, r in (run.hosts.items() if run else []) if r.status == state.DONE)
    measured = (
        f"exit {code}; {times or 'no host rolled'}; {failed}/{total} requests failed, longest without an app answer "
        f"{outage:.1f} s, the VIP silent {silent:.1f} s at most"
    )
    return Result(f"roll --role {role}", measured, "0 failed requests", goal_met=failed == 0, works=code == 0)
