"""`lab failover`: the data tier's drills on the running lab, while the chaos loops write notes through the VIP and
the lab's failover monitor (kiln.lab.dbmonitor, started by `lab up`) watches the db hosts.

1. power off the primary: a replica is promoted, the app's writes resume on it, every acknowledged note is there;
2. power it back: it comes back read-only and follows the new primary (a crash cut its unacknowledged commits);
3. switchover back to it (./inv db switchover): nothing lost, the write pause measured;
4. freeze the primary (QEMU `stop`: a hung host), thaw it after the failover: it is fenced at once, never takes a
   write again and ends read-only.

One table row per drill, as `lab chaos` prints; state/lab/failover.json for the e2e test and bench/.
"""

from __future__ import annotations

import json
import time

from rich.console import Console

from kiln.db import topology
from kiln.db.failover import Event
from kiln.db.replication import Replication
from kiln.fsutil import write_atomic
from kiln.lab import netns, vm
from kiln.lab.chaos import Loops, Result, lacking_text, missing_on, results_table, wait
from kiln.lab.layout import Lab
from kiln.lab.ssh import config_file
from kiln.secrets import SecretStore

BOOT_BACK = 900  # seconds a powered-off db host may take to boot and rejoin under emulation


def _event_after(lab: Lab, since: float, kinds: tuple[str, ...], host: str | None = None) -> Event | None:
    """The first monitor event of `kinds` (for `host`) logged after wall time `since`."""
    for e in topology.events(lab.root):
        if e.at >= since and e.kind in kinds and (host is None or e.host == host):
            return e
    return None


def _wait_event(lab: Lab, since: float, kinds: tuple[str, ...], host: str | None, timeout: float) -> Event:
    found: list[Event] = []

    def seen() -> bool:
        e = _event_after(lab, since, kinds, host)
        if e is not None:
            found.append(e)
        return e is not None

    wait(f"a {'/'.join(kinds)} event{' for ' + host if host else ''}", seen, timeout, step=0.5)
    return found[0]


def _primary(r: Replication, timeout: float = 120) -> str:
    """The one writable db host, once every other one replicates from it."""
    names: list[str] = []

    def one() -> bool:
        seen = r.see_all()
        if topology.healthy(seen):
            names[:] = [s.name for s in seen if not s.read_only]
            return True
        return False

    wait("one primary, every replica following it", one, timeout, step=1)
    return names[0]


def drill_power_off_primary(lab: Lab, loops: Loops, r: Replication) -> list[Result]:
    old = _primary(r)
    host = lab.cluster.host(old)
    began, began_wall = time.monotonic(), time.time()
    vm.kill(lab, host)
    killed = time.monotonic()

    def resumed_at() -> float | None:  # the first write another db host acknowledged after the power-off
        # (one the old primary committed just before it is acknowledged from it after: no resumption)
        return next((w.acked for w in list(loops.write_log) if w.acked > killed and w.db != str(host.ip)), None)

    try:
        promoted = _wait_event(lab, began_wall, ("failover",), None, 120)
        new = promoted.host
        wait("a write acknowledged by another db host", lambda: resumed_at() is not None, 120, step=0.5)
        resumed = (resumed_at() or began) - began
        time.sleep(5)
        lacking, acked = missing_on(lab, new, loops)
    finally:
        back_wall = time.time()
        vm.start(lab, host, vm.DISK)
    results = [
        Result(
            f"power off the primary {old}",
            f"{new} promoted {promoted.at - began_wall:.1f} s after; writes resumed after {resumed:.1f} s; "
            f"{lacking_text(lacking, acked, new)}",
            "writes resume < 30 s; nothing lost",
            goal_met=resumed < 30 and not lacking,
            works=not lacking,
        )
    ]
    came = _wait_event(lab, back_wall, ("rejoin", "errant"), old, BOOT_BACK)
    results.append(
        Result(
            f"power {old} back",
            f"{came.kind} {came.at - back_wall:.0f} s after power-on: {came.message[:100]}",
            "follows the new primary",
            goal_met=came.kind == "rejoin",
            works=came.kind == "rejoin",
        )
    )
    return results


def drill_switchover(lab: Lab, loops: Loops, r: Replication, to: str) -> list[Result]:
    _primary(r, timeout=300)  # the rejoined host replicating, caught up
    reporter = topology.reporter_for(lab.cluster, SecretStore(lab.secrets), lab.server_url)  # the dashboard's alert
    try:
        result = topology.switch(lab.root, r, to, reporter)
    finally:
        reporter.close()
    time.sleep(3)
    lacking, acked = missing_on(lab, to, loops)
    return [
        Result(
            f"switchover to {to}",
            f"writes paused {result.pause:.2f} s; {lacking_text(lacking, acked, to)}",
            "pause < 5 s; nothing lost",
            goal_met=result.pause < 5 and not lacking,
            works=not lacking,
        )
    ]


def drill_freeze_primary(lab: Lab, loops: Loops, r: Replication) -> list[Result]:
    old = _primary(r, timeout=300)
    host = lab.cluster.host(old)
    address = str(host.ip)
    began_wall = time.time()
    vm.monitor(lab, host, "stop")
    frozen = time.monotonic()  # QEMU answered: the guest runs no more
    try:
        promoted = _wait_event(lab, began_wall, ("failover",), None, 120)
    finally:
        thawed_wall = time.time()
        vm.monitor(lab, host, "cont")
    try:
        after: Event | None = _wait_event(lab, thawed_wall, ("rejoin", "errant"), old, 120)
    except TimeoutError:
        after = None
    fenced = _event_after(lab, thawed_wall, ("fence",), old)
    time.sleep(5)
    new = promoted.host
    lacking, acked = missing_on(lab, new, loops)
    # Sent after the freeze and acknowledged by the old primary: it took them after the thaw. A write sent before
    # the freeze may be acknowledged by it after the thaw (its commit was done, its answer still in the frozen
    # guest): not a write taken after the freeze, and one that was would also be missing on the new primary.
    taken = [w.n for w in list(loops.write_log) if w.db == address and w.sent > frozen]
    seen = r.see(old)
    held = not lacking and not taken and seen.answered and seen.read_only
    return [
        Result(
            f"freeze the primary {old}, thaw it after the failover",
            f"{new} promoted {promoted.at - began_wall:.1f} s after the freeze; {old} "
            f"{'fenced by the monitor' if fenced else 'read-only'} after the thaw"
            f"{', then ' + after.kind if after else ''}; {len(taken)} writes sent after the freeze taken by it; "
            f"{lacking_text(lacking, acked, new)}",
            "never writes again; ends read-only; nothing lost",
            goal_met=held,
            works=held,
        )
    ]


def failover(lab: Lab) -> int:
    config_file(lab)
    netns.enter()
    console = Console()
    r = topology.replication_of(lab.cluster, SecretStore(lab.secrets))
    loops = Loops(lab)
    loops.start()
    time.sleep(3)
    results: list[Result] = []
    try:
        first = _primary(r)
        for name, drill in (
            ("power off the primary", lambda: drill_power_off_primary(lab, loops, r)),
            (f"switchover to {first}", lambda: drill_switchover(lab, loops, r, first)),
            ("freeze the primary", lambda: drill_freeze_primary(lab, loops, r)),
        ):
            console.print(f"drill: {name} ...")
            try:
                got = drill()
            except (TimeoutError, OSError) as e:
                got = [Result(name, f"did not finish: {e}", "-", goal_met=False, works=False)]
            for result in got:
                console.print(f"  {result.drill}: {result.measured}")
            results += got
            if not all(x.works for x in got):
                break  # the next drill needs what this one should have left
    finally:
        loops.stop.set()
        r.close()
    console.print(results_table("kiln lab failover", results))
    events = [e.line() for e in topology.events(lab.root)]
    console.print("monitor events:\n  " + "\n  ".join(events[-20:]))
    record = {"drills": [x.__dict__ for x in results], "events": events}
    write_atomic(lab.root / "failover.json", (json.dumps(record, indent=2) + "\n").encode())
    return 0 if results and all(x.works for x in results) else 1
