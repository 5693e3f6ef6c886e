"""./inv db status | switchover --to HOST | monitor: who is primary, changing it on purpose, and failing over.

The runner reaches each db host's MariaDB from the admin network as `kiln_monitor` (secrets/db_monitor_password;
the db role's firewall lets the admin network reach port 3306, and the account has no data privilege). The
monitor's decisions are kiln.db.failover's; this module runs them: one monitor per runner (state/db-monitor.lock),
a switchover and the monitor's ticks never at the same time (state/db-failover.lock), the monitor's memory in
state/db-monitor.json, every event it logs also appended to state/db-events.jsonl.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from kiln.db.failover import TICK, Event, Memory, Monitor, Switchover, switchover
from kiln.db.gtid import Position
from kiln.db.replication import DbNode, Replication, ReplicationError, Seen
from kiln.db.report import VIEW_EVERY, Observed, Report, Reporter
from kiln.model import Cluster
from kiln.operator import Server
from kiln.project import Project
from kiln.roles import db
from kiln.secrets import SecretStore


def replication_of(cluster: Cluster, secrets: SecretStore) -> Replication:
    return Replication(
        [DbNode(h.name, str(h.ip), db.PORT) for h in cluster.by_role(db.NAME)],
        password=secrets.value("db_monitor_password"),
        replication_user=db.REPLICATION_USER,
        replication_password=secrets.value("db_replication_password"),
    )


def status_lines(seen: list[Seen]) -> list[str]:
    """The table ./inv db status prints."""
    by_address = {s.address: s.name for s in seen}
    lines = [f"{'HOST':<8} {'ROLE':<12} {'GTID':<22} {'FOLLOWS':<8} {'IO':<10} {'SQL':<4} {'LAG':>5}  SEMI-SYNC"]
    for s in seen:
        if not s.answered:
            lines.append(f"{s.name:<8} {s.role:<12} {s.error}")
            continue
        follows = by_address.get(s.master_host, s.master_host) or "-"
        lag = "-" if s.lag is None else str(s.lag)
        semi = ("on" if s.semi_sync else "OFF (async)") if not s.read_only else "-"
        lines.append(
            f"{s.name:<8} {s.role:<12} {s.binlog_pos or '-':<22} {follows:<8} {s.io_running or '-':<10} "
            f"{s.sql_running or '-':<4} {lag:>5}  {semi}"
        )
        if s.io_error:
            lines.append(f"         IO error: {s.io_error}")
    return lines


def healthy(seen: list[Seen]) -> bool:
    """Exactly one writable host, and every other one replicating from it."""
    writable = [s for s in seen if s.answered and not s.read_only]
    if len(writable) != 1:
        return False
    p = writable[0]
    return all(s is p or (s.master_host == p.address and s.io_running == s.sql_running == "Yes") for s in seen)


def reprovision_refusal(cluster: Cluster, secrets: SecretStore, name: str) -> str | None:
    """Why re-provisioning db host `name` (which wipes it and seeds it from the primary) could lose data, or None:
    it is the primary; no other host is writable (it may hold the only current copy; or nothing answers here, so
    nothing shows which host is the primary); it holds transactions the primary lacks."""
    r = replication_of(cluster, secrets)
    try:
        seen = {s.name: s for s in r.see_all()}
    finally:
        r.close()
    me = seen[name]
    if me.answered and not me.read_only:
        return "it is the primary (writable): ./inv db switchover --to ANOTHER first"
    others = [s for s in seen.values() if s.answered and not s.read_only and s.name != name]
    if not others:
        if not any(s.answered for s in seen.values()):
            return "no db host answers from here, so nothing shows which one is the primary"
        return "no other db host is writable: it may hold the only current copy"
    primary = others[0]
    if me.answered and not Position.parse(primary.binlog_pos).covers(me.received):
        return f"it holds transactions the primary {primary.name} lacks ({me.binlog_pos} against {primary.binlog_pos})"
    return None


@contextlib.contextmanager
def _lock(path: Path, *, wait: bool) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


EVENTS = "db-events.jsonl"


def _log(state: Path, event: Event) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {event.line()}", flush=True)
    with open(state / EVENTS, "a") as f:
        f.write(json.dumps(asdict(event)) + "\n")


def events(state: Path) -> list[Event]:
    """Every event the monitor and switchovers logged under `state`, oldest first."""
    try:
        lines = (state / EVENTS).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [Event(**json.loads(line)) for line in lines if line.strip()]


class _Reporting:
    """What the monitor hands its Report each tick: the view when it changed or VIEW_EVERY seconds passed, and the
    new events. A Report that raises is logged once and never stops the monitor."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.last: list[dict[str, object]] | None = None
        self.sent_at = 0.0
        self.failing = False

    def __call__(self, seen: list[Seen], at: float, happened: list[Event]) -> None:
        summary = [s.summary() for s in seen]
        fresh = bool(seen) and (summary != self.last or time.monotonic() - self.sent_at >= VIEW_EVERY)
        if not fresh and not happened:
            return
        try:
            self.report(Observed(seen, at) if fresh else None, happened)
        except Exception as e:
            if not self.failing:
                print(f"db monitor: reporting failed ({type(e).__name__}: {e}); the monitor goes on", flush=True)
            self.failing = True
            return
        self.failing = False
        if fresh:
            self.last, self.sent_at = summary, time.monotonic()


def monitor(state: Path, r: Replication, stopping: threading.Event, reporter: Report | None = None) -> int:
    """The monitor's loop until `stopping` is set, its files under `state`; 1 when another monitor uses them.
    `reporter` (a Report: kiln.db.report.Reporter sends to the provisioning server) gets its view and events."""
    state.mkdir(parents=True, exist_ok=True)
    with _lock(state / "db-monitor.lock", wait=False) as mine:
        if not mine:
            print(f"db monitor: another monitor runs here already ({state / 'db-monitor.lock'})", file=sys.stderr)
            return 1
        memory_file = state / "db-monitor.json"
        memory = Memory.load(memory_file)
        mon = Monitor(r, memory)
        reporting = _Reporting(reporter) if reporter is not None else None
        print(f"db monitor: watching {', '.join(r.nodes)}; failover after {mon.detect:.0f}s out of sight", flush=True)
        while not stopping.is_set():
            started = time.monotonic()
            with _lock(state / "db-failover.lock", wait=True):
                try:
                    happened = mon.tick()
                except ReplicationError as e:
                    happened = [Event("refused", "-", str(e))]
                except Exception as e:  # a change that failed half-way is looked at again next tick
                    happened = [Event("error", "-", f"{type(e).__name__}: {e}")]
            for event in happened:
                _log(state, event)
            if happened:
                memory.save(memory_file)
            if reporting is not None:
                reporting(mon.seen, mon.seen_at, happened)
            stopping.wait(max(0.0, TICK - (time.monotonic() - started)))
    return 0


def switch(state: Path, r: Replication, to: str, reporter: Report | None = None) -> Switchover:
    """A switchover under the deciders' lock, its events logged under `state` (and handed to `reporter`)."""
    state.mkdir(parents=True, exist_ok=True)
    with _lock(state / "db-failover.lock", wait=True):
        result, happened = switchover(r, to)
    for event in happened:
        _log(state, event)
    if reporter is not None:
        reporter(None, happened)
    return result


def reporter_for(cluster: Cluster, secrets: SecretStore, url: str | None = None) -> Reporter:
    """A Reporter to the provisioning server (roles.yaml's URL, or `url`), as the operator."""
    return Reporter(Server.of(cluster, secrets.root, url))


def run(
    project: Project,
    cluster: Cluster,
    secrets: SecretStore,
    action: str,
    *,
    to: str | None = None,
    as_json: bool = False,
    lab: bool = False,
) -> int:
    if lab:
        from kiln.lab import netns

        netns.enter()  # the lab's hosts answer only inside its network namespace
    r = replication_of(cluster, secrets)
    reporter = reporter_for(cluster, secrets) if action in ("switchover", "monitor") else None
    try:
        if action == "status":
            seen = r.see_all()
            if as_json:
                print(json.dumps([s.summary() for s in seen], indent=2))
            else:
                print("\n".join(status_lines(seen)))
            return 0 if healthy(seen) else 1
        if action == "switchover":
            assert to is not None
            result = switch(project.state, r, to, reporter)
            print(
                f"switchover done: {result.new} is the primary (was {result.old}) at {result.position}; writes "
                f"paused {result.pause:.2f}s. roles.yaml still names {result.old} primary: set db_role: primary on "
                f"{result.new} and replica on {result.old}, then ./inv apply"
            )
            return 0
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        return monitor(project.state, r, stopping, reporter)
    finally:
        r.close()
        if reporter is not None:
            reporter.close()
