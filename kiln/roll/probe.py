"""--probe URL: a request loop against the VIP while rolling, one request at a time, each bounded: how many
requests failed (an error, a timeout or a status of 500 or more) and the first few reasons."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

INTERVAL = 0.2  # seconds between two requests
TIMEOUT = 5.0  # seconds one request may take before it counts as failed
KEPT = 5  # reasons kept


@dataclass
class Tally:
    url: str
    sent: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        why = f" (first: {'; '.join(self.reasons)})" if self.reasons else ""
        return f"probe {self.url}: {self.failed} of {self.sent} requests failed{why}"


class Probe:
    """The loop, in a thread between start() and stop() (which returns the Tally). `ca`: the CA an https URL's
    certificate is checked against (the cluster CA, secrets/ca.pem), else the system's."""

    def __init__(self, url: str, *, ca: Path | None = None, interval: float = INTERVAL, timeout: float = TIMEOUT):
        self.tally = Tally(url)
        self.interval, self.timeout = interval, timeout
        self.context = ssl.create_default_context(cafile=str(ca) if ca and ca.is_file() else None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _once(self) -> str | None:
        try:
            with urllib.request.urlopen(self.tally.url, timeout=self.timeout, context=self.context) as r:
                r.read()
                return None if r.status < 500 else f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            return None if e.code < 500 else f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            return str(getattr(e, "reason", e))

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            failure = self._once()
            self.tally.sent += 1
            if failure is not None:
                self.tally.failed += 1
                if len(self.tally.reasons) < KEPT:
                    self.tally.reasons.append(f"{time.strftime('%H:%M:%S')} {failure}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> Tally:
        self._stop.set()
        self._thread.join(self.timeout + 1)
        return self.tally
