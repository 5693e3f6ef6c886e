"""Step events: queued on disk first, sent to POST /v1/hosts/NAME/events by a background thread.

Reporting never blocks or fails provisioning: a server that is down only means the queue waits;
what is left is sent by the next run (or stays for an operator to read).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

from firstboot.backoff import Backoff
from firstboot.credential import Credential
from firstboot.log import LOG
from firstboot.redact import redact
from firstboot.state import now_iso
from firstboot.transport import request
from kiln.fsutil import write_atomic

SEND_TIMEOUT = 2.0


class EventQueue:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seq = 0
        self._lock = threading.Lock()

    def put(
        self, step: str, status: str, detail: str = "", duration: float | None = None, generation: int | None = None
    ) -> Path:
        """Queue one event; `generation`: the generation a converge event is about."""
        event: dict[str, object] = {"step": step, "status": status, "detail": redact(detail), "at": now_iso()}
        if duration is not None:
            event["duration"] = round(duration, 3)
        if generation is not None:
            event["generation"] = generation
        with self._lock:
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:04d}.json"
        path = self.directory / name
        write_atomic(path, json.dumps(event).encode(), 0o600, durable=True)
        return path

    def pending(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        except FileNotFoundError:
            return []


class Rejected(OSError):
    """The server will never take this event (HTTP 400, 413, 422: malformed, too large, not in its schema)."""


NEVER = (400, 413, 422)


def post_event(
    url: str,
    host: str,
    event: bytes,
    context: ssl.SSLContext | None,
    credential: Credential | None = None,
    timeout: float = SEND_TIMEOUT,
) -> None:
    """Raise OSError unless the server accepts the event (2xx), Rejected when it never will; `credential`
    authenticates it (the server refuses events from anyone but the host itself)."""
    path = f"/v1/hosts/{quote(host)}/events"
    headers = {"Content-Type": "application/json"}
    if credential is not None:
        headers.update(credential.headers("POST", urlsplit(url).path.rstrip("/") + path, event))
    try:
        answer = request("POST", url, path, context=context, timeout=timeout, body=event, headers=headers)
    except http.client.HTTPException as e:
        raise OSError(str(e)) from None
    if credential is not None:
        credential.observe(answer.headers.get("date"))  # a refusal for this host's clock is not repeated
    if answer.status in NEVER:
        raise Rejected(f"HTTP {answer.status}: {answer.body[:200].decode(errors='replace')}")
    if not 200 <= answer.status < 300:
        raise OSError(f"HTTP {answer.status}")


class Reporter:
    """Owns the queue and a sender thread; `event()` only writes a file and wakes the sender."""

    def __init__(self, queue: EventQueue, credential: Credential | None = None, backoff: Backoff | None = None) -> None:
        self.queue = queue
        self.credential = credential
        self.url = ""
        self.host = ""
        self.context: ssl.SSLContext | None = None
        self._backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def target(self, url: str, host: str, context: ssl.SSLContext | None) -> None:
        self.url, self.host, self.context = url, host, context
        self._wake.set()

    def event(
        self, step: str, status: str, detail: str = "", duration: float | None = None, generation: int | None = None
    ) -> None:
        try:
            self.queue.put(step, status, detail, duration, generation)
        except OSError as e:
            LOG.warning("cannot queue the %s/%s event: %s", step, status, e)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="firstboot-report", daemon=True)
        self._thread.start()

    def flush(self) -> bool:
        """Send what is queued, oldest first; stop at the first failure. True when the queue is empty."""
        if not (self.url and self.host):
            return not self.queue.pending()
        for path in self.queue.pending():
            try:
                post_event(self.url, self.host, path.read_bytes(), self.context, self.credential)
            except Rejected as e:  # sending it again cannot help, and it must not hold back the events after it
                LOG.warning("the server refused the event %s for good (%s); dropped", path.name, e)
            except (OSError, ValueError) as e:
                LOG.debug("reporting to %s failed (%s); %d events stay queued", self.url, e, len(self.queue.pending()))
                return False
            path.unlink(missing_ok=True)
        return True

    def _run(self) -> None:
        delays = self._backoff.delays()
        while not self._stop.is_set():
            if self.flush():
                delays = self._backoff.delays()
                self._wake.wait()
            else:
                self._wake.wait(next(delays))
            self._wake.clear()

    def close(self, budget: float = 3.0) -> int:
        """Stop the sender after one last try within `budget` seconds; return how many events stay queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(budget)
        if self._thread is None or not self._thread.is_alive():
            self.flush()
        return len(self.queue.pending())
