"""The data tier reported to the provisioning server, for its dashboard: the failover monitor's view of the db
hosts (PUT /v1/db) and its events, a switchover's and a backup's (POST /v1/db/events), as the operator (the
operator token, the cluster CA pinned: kiln.operator.Server).

Reporting never holds up what it reports on: the monitor hands its view and events to a Reporter, whose own thread
sends them with a short timeout; while the server cannot be reached the newest view and up to KEPT events wait
(older ones are dropped and counted), the outage is logged once, and its end once.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.db.failover import Event
from kiln.db.replication import Seen
from kiln.operator import Server, ServerError

TIMEOUT = 3.0  # seconds one request may take
RETRY = 5.0  # seconds between two tries while the server cannot be reached
KEPT = 500  # events kept while the server cannot be reached
BATCH = 100  # events per request (the server takes at most kiln.server.dbreport.MAX_EVENTS)
VIEW_EVERY = 10.0  # the monitor sends an unchanged view this often (the dashboard tells a silent monitor by its age)


@dataclass(frozen=True)
class Observed:
    """The db hosts as one look saw them, and when (epoch seconds)."""

    hosts: Sequence[Seen]
    at: float

    def payload(self) -> dict[str, Any]:
        return {"observed": self.at, "hosts": [s.summary() for s in self.hosts]}


Report = Callable[[Observed | None, Sequence[Event]], None]  # what topology.monitor calls; must not block


def event_payload(event: Event, **extra: Any) -> dict[str, Any]:
    """An event as POST /v1/db/events takes it, with an id of its own (a resend is stored once)."""
    base = {"id": uuid.uuid4().hex, "kind": event.kind, "host": event.host, "message": event.message, "at": event.at}
    return {**base, **extra}


def backup_event(manifest: dict[str, Any]) -> dict[str, Any]:
    """The event of a finished backup (kiln.db.backup.take_backup's manifest)."""
    size = manifest.get("stored_bytes", 0) / 2**20
    message = f"backup {manifest['id']} at GTID {manifest['gtid']}, {size:.1f} MiB stored"
    fields = ("id", "gtid", "started", "raw_bytes", "stored_bytes", "seconds")
    return event_payload(
        Event("backup", manifest["host"], message), backup={k: manifest[k] for k in fields if k in manifest}
    )


def _stderr(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", file=sys.stderr, flush=True)


class Refused(ServerError):
    """The server answered and will not take this report (malformed, too large): sending it again is no use."""


def _sent(server: Server, method: str, path: str, body: dict[str, Any], expected: int, timeout: float) -> None:
    status, answer = server.call(method, path, body, timeout=timeout)
    if status == expected:
        return
    said = answer.get("error", answer) if isinstance(answer, dict) else answer
    if 400 <= status < 500 and status != 429:
        raise Refused(f"{method} {path}: HTTP {status}: {said}")
    raise ServerError(f"{method} {path}: HTTP {status}: {said}")


def send_view(server: Server, view: dict[str, Any], *, timeout: float = TIMEOUT) -> None:
    _sent(server, "PUT", "/v1/db", view, 204, timeout)


def send_events(server: Server, events: list[dict[str, Any]], *, timeout: float = TIMEOUT) -> None:
    """POST them; ServerError when the server cannot be reached or does not take them (Refused: it never will)."""
    for i in range(0, len(events), BATCH):
        _sent(server, "POST", "/v1/db/events", {"events": events[i : i + BATCH]}, 201, timeout)


def report_backup(server: Server | None, manifest: dict[str, Any], log: Callable[[str], None] = _stderr) -> bool:
    """Tell the server a backup finished; best effort: a failure is logged, never raised."""
    if server is None:
        return False
    try:
        send_events(server, [backup_event(manifest)])
    except ServerError as e:
        log(f"backup {manifest.get('id')}: not reported to the provisioning server: {e}")
        return False
    return True


class Reporter:
    """A Report that sends from a daemon thread of its own: calling it only queues."""

    def __init__(
        self, server: Server, *, timeout: float = TIMEOUT, retry: float = RETRY, log: Callable[[str], None] = _stderr
    ) -> None:
        self.server, self.timeout, self.retry, self.log = server, timeout, retry, log
        self._lock = threading.Condition()
        self._view: dict[str, Any] | None = None
        self._events: list[dict[str, Any]] = []
        self._dropped = 0
        self._busy = False
        self._stopping = False
        self.down = False  # the last try failed: the outage was logged
        self.sent = 0  # requests that succeeded
        self._thread = threading.Thread(target=self._run, name="kiln-db-report", daemon=True)
        self._thread.start()

    def __call__(self, view: Observed | None, events: Sequence[Event]) -> None:
        with self._lock:
            if view is not None:
                self._view = view.payload()  # only the newest look is worth sending
            self._events += [event_payload(e) for e in events]
            self._keep()
            self._lock.notify()

    def event(self, payload: dict[str, Any]) -> None:
        """Queue an event already in the wire form (backup_event)."""
        with self._lock:
            self._events.append(payload)
            self._keep()
            self._lock.notify()

    def _keep(self) -> None:
        if len(self._events) > KEPT:
            self._dropped += len(self._events) - KEPT
            del self._events[: len(self._events) - KEPT]

    def close(self, timeout: float = TIMEOUT) -> bool:
        """Wait up to `timeout` for what is queued to be sent, then stop; whether everything went."""
        end = time.monotonic() + timeout
        with self._lock:
            while (self._view is not None or self._events or self._busy) and not self.down:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            done = self._view is None and not self._events and not self._busy
            self._stopping = True
            self._lock.notify()
        return done

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._view is None and not self._events and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                view, events = self._view, list(self._events)
                self._view, self._events, self._busy = None, [], True
            try:
                if view is not None:
                    send_view(self.server, view, timeout=self.timeout)
                if events:
                    send_events(self.server, events, timeout=self.timeout)
                self.sent += 1
            except Refused as e:
                self.log(f"db report: dropped: {e}")
            except ServerError as e:
                self._failed(view, events, e)
                continue
            with self._lock:
                self._busy = False
                dropped, self._dropped = self._dropped, 0
                self._lock.notify_all()
            if self.down:
                self.down = False
                lost = f"; {dropped} events were dropped meanwhile" if dropped else ""
                self.log(f"db report: {self.server.url} takes reports again{lost}")

    def _failed(self, view: dict[str, Any] | None, events: list[dict[str, Any]], error: ServerError) -> None:
        """Put back what was not sent (behind nothing newer), log the outage once, wait before the next try."""
        with self._lock:
            if self._view is None:
                self._view = view
            self._events[:0] = events
            self._keep()
            first, self.down, self._busy = not self.down, True, False
            self._lock.notify_all()
        if first:
            self.log(f"db report: {error}; the monitor goes on, reports wait (newest view, {KEPT} events at most)")
        with self._lock:
            self._lock.wait_for(lambda: self._stopping, self.retry)
