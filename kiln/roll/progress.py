"""What the operator sees while rolling: one row per host (phase, elapsed, ETA from the last run), redrawn live
on a terminal, one line per change otherwise; then a summary (hosts rolled, time per host, failed requests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table

from kiln.roll.probe import Tally


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


@dataclass
class Row:
    phase: str = "waiting"
    began: float | None = None  # monotonic, when its first phase began
    seconds: float | None = None  # when it finished
    eta: float | None = None
    outcome: str = ""  # "", "done", "failed: ..."


class Progress:
    """The live view; a steps.View. `live`: redraw a table (a terminal), else print one line per change."""

    def __init__(self, hosts: Sequence[str], console: Console, *, live: bool) -> None:
        self.rows = {h: Row() for h in hosts}
        self.console = console
        self.live = live
        self._lock = threading.Lock()
        self._live: Live | None = None

    def table(self) -> Table:
        t = Table(title="roll", title_justify="left")
        for column in ("host", "phase", "elapsed", "ETA"):
            t.add_column(column)
        now = time.monotonic()
        for host, r in self.rows.items():
            elapsed = r.seconds if r.seconds is not None else (now - r.began if r.began is not None else None)
            phase = r.outcome or r.phase
            t.add_row(host, phase, _clock(elapsed), _clock(r.eta) if r.outcome == "" else "")
        return t

    def _changed(self, host: str, line: str) -> None:
        if self._live is not None:
            self._live.update(self.table())
        else:
            self.console.print(f"{host}: {line}", highlight=False)

    def phase(self, host: str, name: str, eta: float | None) -> None:
        with self._lock:
            r = self.rows[host]
            r.began = r.began if r.began is not None else time.monotonic()
            r.phase, r.eta = name, eta
            self._changed(host, f"{name} (ETA {_clock(eta)})" if eta else name)

    def done(self, host: str, seconds: float) -> None:
        with self._lock:
            self.rows[host].seconds, self.rows[host].outcome = seconds, "done"
            self._changed(host, f"done in {_clock(seconds)}")

    def failed(self, host: str, error: str) -> None:
        with self._lock:
            r = self.rows[host]
            r.seconds = time.monotonic() - r.began if r.began is not None else 0.0
            r.outcome = f"failed in {r.phase}"
            self._changed(host, f"failed in {r.phase}: {error}")

    @contextmanager
    def shown(self) -> Iterator[Progress]:
        if not self.live:
            yield self
            return
        with Live(self.table(), console=self.console, refresh_per_second=2, transient=False) as live:
            self._live = live
            ticking = threading.Event()

            def tick() -> None:  # the elapsed column moves while a phase waits
                while not ticking.wait(1.0):
                    with self._lock:
                        live.update(self.table())

            threading.Thread(target=tick, daemon=True).start()
            try:
                yield self
            finally:
                ticking.set()
                self._live = None


def summary(rolled: dict[str, float], tally: Tally | None) -> Table:
    """The table printed at the end: each host rolled in this run with its time, then the probe's count."""
    t = Table(title="rolled", title_justify="left")
    t.add_column("host")
    t.add_column("time", justify="right")
    for host, seconds in rolled.items():
        t.add_row(host, _clock(seconds))
    if rolled:
        t.add_row("mean", _clock(sum(rolled.values()) / len(rolled)))
    if tally is not None:
        t.caption = tally.line()
    return t
