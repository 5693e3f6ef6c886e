"""Small, bounded probes the joins and checks use: HTTP GET, TCP connect, waiting until one passes."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from firstboot.log import LOG


class ProbeFailed(Exception):
    pass


# Per attempt: a node exporter's /metrics takes several seconds on a busy VM (seven TCG guests on two cores).
HTTP_TIMEOUT = 15.0


def http_get(url: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        raise ProbeFailed(f"GET {url}: {e.__class__.__name__}: {e}") from None
    finally:
        conn.close()


def http_ok(url: str) -> str:
    status, _ = http_get(url)
    if not 200 <= status < 400:
        raise ProbeFailed(f"GET {url}: HTTP {status}")
    return f"HTTP {status}"


def tcp_open(host: str, port: int, timeout: float = 3.0) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except OSError as e:
        raise ProbeFailed(f"tcp {host}:{port}: {e}") from None


def wait_for(probe: Callable[[], str], what: str, deadline: float, interval: float = 0.5) -> str:
    """Run `probe` until it passes or `deadline` seconds pass; log the reason every few failures.

    After a failed try the next waits at least as long as that try took: a probe that timed out on a busy peer
    asks again only after as long again, so the checks never take more than half of what they wait for (retrying
    at once stacked node exporter scrapes until the VM did nothing else)."""
    end = time.monotonic() + deadline
    failures = 0
    while True:
        began = time.monotonic()
        try:
            return probe()
        except ProbeFailed as e:
            failures += 1
            now = time.monotonic()
            if now >= end:
                raise ProbeFailed(f"{what}: still failing after {deadline:.0f}s: {e}") from None
            if failures in (1, 5) or failures % 20 == 0:
                LOG.info("waiting for %s: %s", what, e)
            time.sleep(min(max(interval, now - began), end - now))
