"""Automatic failover (`./inv db monitor`) and planned switchover (`./inv db switchover --to HOST`).

The monitor looks at every db host once a TICK and keeps one writable node:
- one writable: that is the primary; a reachable host that follows someone else (or nobody: a former primary back
  from the dead) is re-pointed at it by GTID, unless it holds transactions the primary lacks (errant): then it is
  left read-only, following nobody, and the operator is told what to do;
- two writable (never, unless something outside kiln made it so): every one but the primary it knew is fenced;
- none writable, the primary it knew answers (its restart, or its guard's fence): writable again when no answering
  host is ahead of it;
- none writable, the primary out of sight for DETECT_SECONDS, and no replica still hearing it: the replica that
  received the most is promoted after applying what it received, the others re-pointed at it.

Why that is safe when the network splits: the old primary's guard (firstboot.dbguard) fences it once it has seen
neither this monitor nor a replica hearing it for FENCE_AFTER seconds, well before DETECT_SECONDS; and a commit
waits for a replica's acknowledgement longer than that (kiln.roles.db.SEMI_SYNC_TIMEOUT_MS), so nothing the old
primary acknowledged is missing on the replica promoted. A primary last seen running asynchronously (no replica
acknowledging) is not failed over automatically: the replicas may lack writes it acknowledged.

One decider: the monitor and a switchover take the same lock (state/db-failover.lock); run one monitor per cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from firstboot.dbguard import FENCE_AFTER
from kiln.db.gtid import Position
from kiln.db.replication import ERRANT, Replication, ReplicationError, Seen, errant

DETECT_SECONDS = 10.0  # the primary unanswering this long since it last answered, and no replica hears it: fail over
TICK = 1.0
CATCH_UP_SECONDS = 30.0  # how long a promoted replica may take to apply its relay log
REJOIN_SECONDS = 10.0
assert DETECT_SECONDS > FENCE_AFTER + 2 * TICK, "the old primary must have fenced itself before a promotion"


@dataclass
class Event:
    """Something the monitor did or refused to do; `kind` is one word for the dashboard and alerts."""

    kind: str  # primary, failover, switchover, rejoin, fence, errant, writable, waiting, refused
    host: str
    message: str
    at: float = field(default_factory=time.time)

    def line(self) -> str:
        return f"{self.kind} {self.host}: {self.message}"


@dataclass
class Memory:
    """What the monitor knows between ticks (and restarts: state/db-monitor.json)."""

    primary: str = ""
    semi_sync: bool = True  # the primary's commits waited for a replica when last seen
    seen_at: float | None = None  # monotonic: when the primary last answered (or the monitor started without it)
    errant: dict[str, str] = field(default_factory=dict)  # host -> what it has the primary lacks
    said: set[str] = field(default_factory=set)  # messages given once until the situation changes

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"primary": self.primary, "semi_sync": self.semi_sync, "errant": self.errant}))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Memory:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        return cls(
            primary=data.get("primary", ""), semi_sync=data.get("semi_sync", True), errant=data.get("errant", {})
        )


class Monitor:
    def __init__(
        self,
        replication: Replication,
        memory: Memory,
        *,
        detect: float = DETECT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.r = replication
        self.memory = memory
        self.detect = detect
        self.clock = clock
        self.seen: list[Seen] = []  # the last look at every db host (what the dashboard is sent)
        self.seen_at = 0.0  # when it was taken (epoch seconds)

    def tick(self) -> list[Event]:
        self.seen_at = time.time()
        self.seen = self.r.see_all()
        seen = {s.name: s for s in self.seen}
        writable = [s for s in seen.values() if s.answered and not s.read_only]
        if len(writable) > 1:
            return list(self._split_brain(writable))
        if writable:
            return list(self._healthy(writable[0], seen))
        return list(self._no_writer(seen))

    def _once(self, key: str, event: Event) -> Iterator[Event]:
        if key not in self.memory.said:
            self.memory.said.add(key)
            yield event

    def _split_brain(self, writable: list[Seen]) -> Iterator[Event]:
        keep = self.memory.primary if self.memory.primary in {s.name for s in writable} else ""
        for s in writable:
            if s.name != keep:
                self.r.fence(s.name)
                yield Event("fence", s.name, f"writable beside {keep or 'another'}: fenced (read_only on)")

    def _healthy(self, primary: Seen, seen: dict[str, Seen]) -> Iterator[Event]:
        m = self.memory
        if m.primary != primary.name:
            yield Event("primary", primary.name, f"is the primary (writable) at {primary.binlog_pos or '(empty)'}")
        m.primary, m.semi_sync, m.seen_at = primary.name, primary.semi_sync, self.clock()
        m.said = {k for k in m.said if not k.startswith("lost:")}
        for s in seen.values():
            if s.name == primary.name or not s.answered or s.name in m.errant:
                continue
            if s.master_host == primary.address and s.io_errno != ERRANT:
                continue
            yield from self._rejoin(s, primary)

    def _rejoin(self, s: Seen, primary: Seen) -> Iterator[Event]:
        former = not s.master_host  # follows nobody: a former primary (or a fenced one)
        extra = errant(s, primary) if former else ""
        if not extra:
            self.r.follow(s.name, primary.name, own_binlog=former)
            after = self.r.replicating(s.name, REJOIN_SECONDS)
            if after.io_errno != ERRANT:
                what = "former primary" if former else f"was following {s.master_host}"
                yield Event("rejoin", s.name, f"follows {primary.name} by GTID from {after.slave_pos} ({what})")
                return
            self.r.stop_following(s.name)
            extra = after.io_error
        self.memory.errant[s.name] = extra
        yield Event(
            "errant",
            s.name,
            f"holds transactions {primary.name} lacks ({extra}): left read-only, following nobody. Keep them or "
            f"not: read them with mariadb-binlog on {s.name}, apply what must stay on {primary.name} by hand, then "
            f"re-provision {s.name} (./inv reprovision {s.name} --force), which seeds it from {primary.name}",
        )

    def _known_primary(self, seen: dict[str, Seen]) -> str:
        if self.memory.primary in seen:
            return self.memory.primary
        followed = {s.master_host for s in seen.values() if s.answered and s.master_host}
        by_address = {s.address: s.name for s in seen.values()}
        names = sorted(by_address[a] for a in followed if a in by_address)
        return names[0] if len(names) == 1 else ""

    def _no_writer(self, seen: dict[str, Seen]) -> Iterator[Event]:
        m = self.memory
        known = self._known_primary(seen)
        if not known:
            yield from self._once("unknown", Event("waiting", "-", "no db host is writable and none is followed"))
            return
        p = seen[known]
        if p.answered:
            yield from self._resume(p, seen)
            return
        now = self.clock()
        if m.seen_at is None:
            m.seen_at = now
        lost = now - m.seen_at
        if lost < self.detect:
            yield from self._once(f"lost:{known}", Event("waiting", known, f"out of sight ({p.error})"))
            return
        hearing = [s.name for s in seen.values() if s.answered and s.master_host == p.address and s.io_running == "Yes"]
        if hearing:
            yield from self._once(
                f"lost:{known}:heard",
                Event("refused", known, f"out of sight here, but {', '.join(hearing)} still hear it: no failover"),
            )
            return
        if not m.semi_sync:
            yield from self._once(
                f"lost:{known}:async",
                Event(
                    "refused",
                    known,
                    "was running asynchronously (no replica acknowledging) when last seen: a replica may lack writes "
                    "it acknowledged, so no automatic failover. Bring it back, or choose: ./inv db switchover --to "
                    "HOST --force",
                ),
            )
            return
        candidates = [s for s in seen.values() if s.answered and s.master_host == p.address and s.name not in m.errant]
        if not candidates:
            yield from self._once(f"lost:{known}:none", Event("refused", known, "out of sight and no replica answers"))
            return
        yield from self._promote(known, candidates, lost)

    def _promote(self, old: str, candidates: list[Seen], lost: float) -> Iterator[Event]:
        best = most_advanced(candidates)
        try:
            position = self.r.promote(best.name, catch_up=CATCH_UP_SECONDS)
        except ReplicationError as e:
            yield Event("refused", best.name, str(e))
            return
        self.memory.primary, self.memory.seen_at, self.memory.semi_sync = best.name, self.clock(), True
        yield Event(
            "failover",
            best.name,
            f"promoted: {old} out of sight {lost:.1f}s and no replica heard it; writable at {position}",
        )
        for other in candidates:
            if other.name != best.name:
                self.r.follow(other.name, best.name)
                yield Event("rejoin", other.name, f"follows {best.name}")

    def _resume(self, p: Seen, seen: dict[str, Seen]) -> Iterator[Event]:
        if p.master_host:
            yield from self._once(
                f"resume:{p.name}", Event("waiting", p.name, f"read-only and following {p.master_host}")
            )
            return
        mine = Position.parse(p.binlog_pos)
        ahead = [s.name for s in seen.values() if s.answered and s.name != p.name and not mine.covers(s.received)]
        if ahead:
            yield from self._once(
                f"resume:{p.name}:ahead",
                Event("refused", p.name, f"read-only, and {', '.join(ahead)} received more: not made writable"),
            )
            return
        self.r.make_writable(p.name)
        self.memory.seen_at = self.clock()
        yield Event("writable", p.name, f"writable again at {p.binlog_pos or '(empty)'} (read-only after a restart)")


def most_advanced(candidates: list[Seen]) -> Seen:
    """The replica whose received position covers every other's (the first by name among equals)."""
    ordered = sorted(candidates, key=lambda s: s.name)
    for s in ordered:
        if all(s.received.covers(o.received) for o in ordered):
            return s
    return max(ordered, key=lambda s: s.received.transactions_after(Position()))


@dataclass(frozen=True)
class Switchover:
    old: str
    new: str
    position: str
    pause: float  # seconds between the old primary's read_only and the new one's writable


def switchover(r: Replication, to: str, *, catch_up: float = CATCH_UP_SECONDS) -> tuple[Switchover, list[Event]]:
    """Planned: the primary stops taking writes, `to` applies everything it wrote, `to` becomes the primary, the
    old one and the other replicas follow it. Zero lost writes: nothing is written between the old primary's
    read_only and the new one's writable. ReplicationError (the old primary writable again) when `to` cannot catch
    up; before any change when the cluster is not in a state to switch."""
    seen = {s.name: s for s in r.see_all()}
    if to not in seen:
        raise ReplicationError(f"{to} is not a db host (one of: {', '.join(seen)})")
    writable = [s for s in seen.values() if s.answered and not s.read_only]
    if len(writable) != 1:
        raise ReplicationError(f"{len(writable)} writable db hosts: a switchover needs exactly one (./inv db status)")
    old = writable[0]
    target = seen[to]
    if target.name == old.name:
        raise ReplicationError(f"{to} is the primary already")
    if not (target.answered and target.master_host == old.address and target.io_running == "Yes"):
        raise ReplicationError(
            f"{to} does not replicate from {old.name} right now (IO thread {target.io_running or 'off'}"
            f"{', ' + target.io_error if target.io_error else ''}): ./inv db status"
        )
    started = time.monotonic()
    r.fence(old.name)
    position = str(r.query(old.name, "SELECT @@gtid_binlog_pos AS p")[0]["p"] or "")
    if not r.wait_applied(to, position, catch_up):
        r.make_writable(old.name)
        raise ReplicationError(f"{to} did not reach {position} within {catch_up:.0f}s: {old.name} is writable again")
    r.stop_following(to)
    r.make_writable(to)
    pause = time.monotonic() - started
    events = [Event("switchover", to, f"promoted from {old.name} at {position}; writes paused {pause:.2f}s")]
    r.follow(old.name, to, own_binlog=True)
    events.append(Event("rejoin", old.name, f"follows {to}"))
    for s in seen.values():
        if s.name not in (old.name, to) and s.answered:
            r.follow(s.name, to)
            events.append(Event("rejoin", s.name, f"follows {to}"))
    return Switchover(old.name, to, position, pause), events
