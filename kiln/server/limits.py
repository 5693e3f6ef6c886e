"""What one client may cost the server: bounded request heads, deadlines for slow and idle connections, and a
rate for what hosts write. So one slow, huge or chatty client cannot stall or starve the others.

- A request head is at most 16 KiB: a bigger one is answered 431 and the connection closed as soon as its size
  shows, before it is parsed (httptools, uvicorn's default parser, takes heads of any size; h11's own bound only
  holds while a head arrives in pieces).
- A connection must deliver a complete request head within HEADER_TIMEOUT seconds of connecting or of its last
  response (a slow loris holds a socket for that long, not forever); uvicorn's keep-alive timeout closes the
  idle ones between requests.
- uvicorn's limit_concurrency answers 503 beyond CONCURRENCY connections and tasks at once.
- Events and enrolments: a token bucket per host and per peer address (429 with Retry-After beyond it).
- Events wait their turn behind the boot path (ReportQueue): a bundle fetch is not queued behind a storm's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 16 * 1024
HEADER_TIMEOUT = 10.0  # seconds for a request head to arrive whole
IDLE_TIMEOUT = 30  # seconds a kept-alive connection may sit idle between requests
CONCURRENCY = 512  # connections and tasks at once; beyond it, 503


TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a size bound and a deadline for each request head."""

    _head_deadline: asyncio.TimerHandle | None = None
    _head_bytes = 0  # of the head that is arriving

    @staticmethod
    def refused(action: str, reason: str) -> None:
        """Counts a connection refused here (uvicorn_limits binds the server's metrics); nothing by default."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        self._arm()

    def _awaiting_head(self) -> bool:
        # Not while the client still sends a body: one the app answered before reading it (a 413) is drained by
        # uvicorn as body, under the head deadline, and its bytes are no head (counting them answered the next
        # request on the connection 431).
        return self.conn.their_state is not h11.SEND_BODY and (self.cycle is None or self.cycle.response_complete)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head():
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > MAX_HEAD_BYTES:
                self._disarm()
                self.refused("request", "head_too_large")
                self.transport.write(TOO_LARGE)
                # abort, not close: a TLS close waits for the client's close_notify, and OpenSSL decrypts all the
                # client still sends to find it (9 ms of CPU for a 10 MB head, 87 such clients a second saturated
                # the server). The 431 is on its way; what follows it is a reset.
                self.transport.abort()
                return
            if end >= 0:
                self._head_bytes = 0  # the next head counts afresh
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a whole head arrived: the request is the app's now
        else:
            self._arm()  # part of a head, or the next one after a response: it has until the deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: the keep-alive timeout applies until data comes

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.refused("request", "head_timeout")
            self.transport.close()


def uvicorn_limits(refused: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """The uvicorn.Config settings that apply these limits; `refused(action, reason)` counts what the protocol
    refuses (kiln/server/metrics.py)."""
    protocol: type[GuardedH11] = GuardedH11
    if refused is not None:

        class Counted(GuardedH11):
            pass

        Counted.refused = staticmethod(refused)  # type: ignore[method-assign,assignment]
        protocol = Counted
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": IDLE_TIMEOUT,
        "limit_concurrency": CONCURRENCY,
    }


@dataclass
class Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimit:
    """A token bucket per key: `rate` per second, `burst` at once. Thread-safe; the oldest keys are forgotten
    past `keys` (a flood of new addresses cannot grow it without bound)."""

    rate: float
    burst: float
    keys: int = 10_000
    _buckets: dict[str, Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key: str, *, now: float | None = None) -> float:
        """0 when one more is allowed now (and taken); else the seconds until it would be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.pop(key, None) or Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            self._buckets[key] = bucket  # most recently used last
            while len(self._buckets) > self.keys:
                self._buckets.pop(next(iter(self._buckets)))
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate


@dataclass
class Limits:
    """The rates the routes apply: what a host (by name) and a peer (by address) may write."""

    # a host sends about 20 events per provisioning; a peer address may be a whole rack behind NAT
    per_host: RateLimit = field(default_factory=lambda: RateLimit(rate=10, burst=100))
    per_peer: RateLimit = field(default_factory=lambda: RateLimit(rate=500, burst=5000))

    def wait(self, peer: str, host: str | None) -> float:
        """0 when the request may go on; else how long the client should wait (Retry-After)."""
        waits = [self.per_peer.take(peer)]
        if host is not None:
            waits.append(self.per_host.take(host))
        return max(waits)


class ReportQueue:
    """Host reports (events: ten per provisioning) take turns; the boot path (iPXE script, enrolment, bundle: what
    a booting host waits for) does not. The event loop runs ready requests in arrival order, so in a boot storm
    each bundle fetch waited for the events of every host in flight (bench/server.py, 1000 hosts, 32 at once:
    p99 365 ms; 41-54 ms with this, events' own p50 48 -> 62 ms). A report's turn starts with a step aside: what
    is ready by then runs first, and the other reports queue behind this one, in order."""

    def __init__(self, at_once: int) -> None:
        """`at_once`: reports in progress at once (the state store's threads: a SQLite write runs on the loop)."""
        self._turns = asyncio.Semaphore(at_once)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._turns:
            await asyncio.sleep(0)
            yield
