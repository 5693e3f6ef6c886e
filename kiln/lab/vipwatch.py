"""Which load balancers say they hold the VIP, polled while a lab change runs: each LB's node exporter, its textfile
collector only (`kiln_keepalived_vrrp_state`, which keepalived's notify rewrites at each transition). A VIP that
moved during a change, and when, shows in the change's record: one small HTTP request per LB a poll, no SSH.

    watch = VipWatch.of(cluster.by_role("lb"))   # or VipWatch({"lb1": exporter_url("10.10.0.11", 9100), ...})
    watch.start(); ...; watch.stop()
    watch.moves      [(monotonic time, ("lb1",)), (t, ("lb2",)), ...]: the holders at each change
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from kiln.model import Host
from kiln.roles.context import NODE_EXPORTER_PORT

METRIC = "kiln_keepalived_vrrp_state"
EVERY = 2.0  # seconds between polls
TIMEOUT = 3.0  # seconds an exporter gets to answer; one that does not holds nothing this poll


def exporter_url(ip: str, port: int) -> str:
    """The node exporter's /metrics with the textfile collector alone (cheap for an emulated LB)."""
    return f"http://{ip}:{port}/metrics?collect%5B%5D=textfile"


@dataclass
class VipWatch:
    urls: Mapping[str, str]  # LB name -> its exporter_url
    every: float = EVERY
    moves: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def of(cls, lbs: Iterable[Host]) -> VipWatch:
        """A watch over these LBs' node exporters, at their host addresses."""
        return cls({h.name: exporter_url(str(h.ip), NODE_EXPORTER_PORT) for h in lbs})

    def holders(self) -> tuple[str, ...]:
        """The LBs whose exporter says 1 now, in name order."""
        held = []
        for name, url in sorted(self.urls.items()):
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
                    text = r.read().decode()
            except OSError:
                continue
            values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == METRIC]
            if any(v == 1 for v in values):
                held.append(name)
        return tuple(held)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.holders()
            if not self.moves or self.moves[-1][1] != now:
                self.moves.append((time.monotonic(), now))
            self._stop.wait(self.every)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT * len(self.urls) + self.every + 1)

    def said(self, since: float) -> str:
        """The holders over time, e.g. "lb1 (+0.0 s), lb2 (+53.1 s), lb1 (+80.4 s)"; "none" for a poll with none."""
        return ", ".join(f"{'+'.join(h) or 'none'} (+{max(0.0, t - since):.1f} s)" for t, h in self.moves)
