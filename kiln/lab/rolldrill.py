"""`./inv lab roll`: the roll drills (issue 17 item 4) on the lab that is up, after an image rebuild: `./inv roll
--role ROLE --lab` for web, then lb, while chaos's request loop runs through the VIP. What each proves:

- the roll exits 0, and no request through the VIP failed meanwhile (the goal; the longest time without an answer
  and the VIP's longest silence are reported);
- every host of the role runs the role image as it is now: the root filesystem UUID each host mounts (`findmnt`)
  is the image's (imagefs.root_uuid; each build makes the filesystem anew, so a rebuilt web image shows);
- for lb, the VIP moved at most twice (away from the first LB rolled, back when it preempts), as the LBs' node
  exporters said (VipWatch).

In a lab booted from disk (CI's) a roll's reinstall is the lab's (kiln.lab.vm.reinstall): a new disk from the image,
not the installer over the network. Results in state/lab/roll.json, as chaos.json's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from rich.console import Console

from kiln.build.imagefs import root_uuid
from kiln.fsutil import write_atomic
from kiln.lab import netns
from kiln.lab.chaos import Loops, Result, results_table, ssh
from kiln.lab.layout import Lab
from kiln.lab.ssh import config_file
from kiln.lab.vipwatch import VipWatch
from kiln.project import Project
from kiln.roll import cli as roll_cli
from kiln.roll import state

ROLES = ("web", "lb")  # web first: the lb roll then checks the webs UP behind each LB it puts back
VIP_MOVES = 2  # an lb roll: away from the MASTER when it is rolled, back when it preempts once rejoined
VIP_SILENT_GOAL = 5.0  # seconds, the VIP failover goal of lab chaos


@dataclass(frozen=True)
class Rolled:
    """What one role's roll did, as measured."""

    code: int  # ./inv roll's exit code
    seconds: dict[str, float]  # host -> its roll time, for each host rolled
    failed: int  # requests through the VIP that failed
    total: int
    outage: float  # seconds, the longest without an answer from the app
    silent: float  # seconds, the longest the VIP gave no answer at all
    moves: int  # how often the VIP's holder changed


def vip_moves(moves: list[tuple[float, tuple[str, ...]]]) -> int:
    """How often the VIP went from one LB to another, from VipWatch's holders at each change: a poll where none or
    both said they held it is no move of its own (a starved exporter, a handover seen half-way)."""
    sole = [holders[0] for _, holders in moves if len(holders) == 1]
    return sum(1 for before, after in zip(sole, sole[1:], strict=False) if before != after)


def drill_roll(lab: Lab, project: Project, role: str) -> Rolled:
    """Roll ROLE in the lab under the request loop and the VIP's watch. Enters the lab's namespace first: the loops'
    threads send from inside it."""
    netns.enter()
    loops = Loops(lab)
    loops.start()
    watch = VipWatch.of(lab.cluster.by_role("lb"))
    watch.start()
    time.sleep(3)
    since = time.monotonic()
    try:
        with loops.probe_vip():
            code = roll_cli.roll(project, role, lab=True)
    finally:
        until = time.monotonic()
        loops.stop.set()
        watch.stop()
    loops.settle(until)  # a request still in flight counts once it has its answer or its failure
    outage, failed, total = loops.failed_seconds(since, until)
    run = state.load(project.state / "roll.json")
    seconds = {h: r.seconds for h, r in (run.hosts.items() if run else []) if r.status == state.DONE}
    return Rolled(code, seconds, failed, total, outage, loops.vip_silent(since, until), vip_moves(watch.moves))


def result(role: str, rolled: Rolled, image: str, on: dict[str, str]) -> Result:
    """The drill's Result: `works` when the roll exited 0, every host mounts `image` (a root filesystem UUID) and,
    for lb, the VIP moved at most VIP_MOVES times; `goal_met` when no request failed (and, for lb, the VIP was
    silent less than the failover goal)."""
    stale = sorted(h for h, uuid in on.items() if uuid != image)
    times = ", ".join(f"{h} {s:.0f} s" for h, s in rolled.seconds.items()) or "no host rolled"
    measured = (
        f"exit {rolled.code}; {times}; {rolled.failed}/{rolled.total} requests failed, longest without an app answer "
        f"{rolled.outage:.1f} s, the VIP silent {rolled.silent:.1f} s at most, moved {rolled.moves} time(s); "
        + (f"{', '.join(stale)} not on the image's root filesystem {image}" if stale else f"all on {image}")
    )
    goal = "0 failed requests"
    goal_met = rolled.failed == 0
    works = rolled.code == 0 and not stale
    if role == "lb":
        goal += f"; the VIP silent < {VIP_SILENT_GOAL:g} s"
        goal_met = goal_met and rolled.silent < VIP_SILENT_GOAL
        works = works and rolled.moves <= VIP_MOVES
    return Result(f"roll --role {role}", measured, goal, goal_met=goal_met, works=works)


def rolls(lab: Lab, project: Project, roles: tuple[str, ...] = ROLES) -> int:
    """Each of `roles` rolled in turn (stopping at the first that does not work); 0 when every roll worked."""
    config_file(lab)  # the drills' SSH reads it
    console = Console()
    results: list[Result] = []
    record: list[dict[str, object]] = []  # per role: the Result, the image's root filesystem, each host's
    for role in roles:
        image = root_uuid(lab.images / role / f"{role}.raw")
        console.print(f"drill: roll --role {role} (its image's root filesystem: {image}) ...")
        rolled = drill_roll(lab, project, role)
        on = {h.name: ssh(lab, h.name, "findmnt -no UUID /").strip() for h in lab.cluster.by_role(role)}
        results.append(result(role, rolled, image, on))
        record.append({**results[-1].__dict__, "role": role, "image": image, "hosts": on, **rolled.__dict__})
        console.print(f"  {results[-1].drill}: {results[-1].measured}")
        if not results[-1].works:
            break
    console.print(results_table("kiln lab roll", results))
    write_atomic(lab.root / "roll.json", (json.dumps(record, indent=2) + "\n").encode())
    return 0 if len(results) == len(roles) and all(r.works for r in results) else 1
