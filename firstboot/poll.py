"""Converge's question to the provisioning server: is there a generation newer than the one this host runs?

    GET /v1/bundle?after=G   signed with the host key like the first boot's GET /v1/bundle (the signature
                             covers the path and the query)
      200  a newer bundle, signed (X-Kiln-Signature): verified and applied like the first boot's
      204  nothing newer; Retry-After: N, the seconds until the next question (the server scales them with
           the size of its fleet)
      403  this host's key was revoked: the host is retired, and converge stops for good

Polling, not a long poll: a held request would pin one connection per host for as long as nothing changes,
10,000 sockets for 10,000 hosts, far past what the server admits at once (kiln/server/limits.py), and each
reconnect after a server restart would arrive at the same instant. A poll holds a connection for one short
exchange; the server sets the pace through Retry-After and can slow the whole fleet down as it grows. The
agent clamps that pace to [MIN_WAIT, MAX_WAIT] (a server that says 0 or a day is wrong) and spreads hosts by
±10% so that hosts started together do not stay in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from firstboot.backoff import Retry
from firstboot.credential import Credential
from firstboot.steps.fetch import SIGNATURE_HEADER, Signed, call, server_said, tls_for

MIN_WAIT, MAX_WAIT = 2.0, 600.0  # seconds between two polls, whatever Retry-After says
JITTER = 0.10


@dataclass(frozen=True)
class Newer:
    signed: Signed


@dataclass(frozen=True)
class Unchanged:
    retry_after: str | None  # the header as sent


@dataclass(frozen=True)
class Revoked:
    reason: str  # what the server said


Polled = Newer | Unchanged | Revoked


class PollFailed(Exception):
    """No answer that says anything (the server is down, unreachable, or answered something else): ask later."""


def poll(url: str, after: int, ca_pem: Path, credential: Credential) -> Polled:
    """One signed GET /v1/bundle?after=`after`; PollFailed for anything but 200, 204 and 403."""
    context = tls_for(url, ca_pem)
    try:
        status, body, headers = call(url, f"/v1/bundle?after={after}", context, credential)
    except Retry as e:
        raise PollFailed(str(e)) from None
    if status == 200:
        return Newer(Signed(body, headers.get(SIGNATURE_HEADER.lower())))
    if status == 204:
        return Unchanged(headers.get("retry-after"))
    if status == 403:
        return Revoked(server_said(body))
    raise PollFailed(f"{url}: HTTP {status}: {server_said(body)}")


def wait_after(retry_after: str | None, default: float, rng: random.Random | None = None) -> float:
    """Seconds until the next poll: Retry-After (integer seconds; `default` when absent or not one) clamped to
    [MIN_WAIT, MAX_WAIT], then ±10% jitter."""
    try:
        seconds = float(int((retry_after or "").strip()))
    except ValueError:
        seconds = default
    seconds = min(MAX_WAIT, max(MIN_WAIT, seconds))
    return seconds * (rng or random).uniform(1 - JITTER, 1 + JITTER)
