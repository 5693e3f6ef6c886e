"""The progress display: one row per image (phase, elapsed, outcome) on a terminal, one line per
phase change otherwise. The full DIB output goes to each image's build.log, never to the screen."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from kiln.build import dib


@dataclass
class Row:
    name: str
    state: str = "waiting"
    phase: str = ""
    started: float | None = None
    seconds: float | None = None


@dataclass
class Display:
    names: list[str]
    console: Console = field(default_factory=lambda: Console(highlight=False))
    rows: dict[str, Row] = field(init=False)
    _live: Live | None = field(init=False, default=None)
    # builds run side by side: one row change and its redraw at a time
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rows = {n: Row(n) for n in self.names}

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)
            self._live = None

    def _table(self) -> Table:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("image", "state", "phase", "elapsed"):
            table.add_column(column)
        now = time.monotonic()
        for row in self.rows.values():
            secs = row.seconds if row.seconds is not None else (now - row.started if row.started else None)
            elapsed = f"{secs:.0f}s" if secs is not None else ""
            style = {"failed": "red", "built": "green", "up to date": "green"}.get(row.state, "")
            table.add_row(row.name, f"[{style}]{row.state}[/]" if style else row.state, row.phase, elapsed)
        return table

    def print(self, message: str) -> None:
        """A line of its own (above the live table on a terminal)."""
        self.console.print(message, markup=False)

    def set(self, name: str, state: str, phase: str | None = None, seconds: float | None = None) -> None:
        with self._lock:
            self._set(name, state, phase, seconds)

    def _set(self, name: str, state: str, phase: str | None, seconds: float | None) -> None:
        row = self.rows.setdefault(name, Row(name))
        if state == "building" and row.started is None:
            row.started = time.monotonic()
        changed = state != row.state or (phase is not None and phase.split("/")[0] != row.phase.split("/")[0])
        row.state = state
        if phase is not None:
            row.phase = phase
        if seconds is not None:
            row.seconds = seconds
        if self._live is not None:
            self._live.update(self._table())
        elif changed:
            where = f" {row.phase}" if row.phase and state == "building" else ""
            took = f" in {seconds:.0f}s" if seconds is not None else ""
            self.print(f"{name}: {state}{where}{took}")

    def follow(self, name: str, log: Path, worker: threading.Thread, poll: float = 0.5) -> None:
        """Show the phases `log` goes through until `worker` ends."""
        offset = 0
        partial = ""
        while worker.is_alive():
            worker.join(poll)
            try:
                with log.open(errors="replace") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset = f.tell()
            except FileNotFoundError:
                chunk = ""
            lines = (partial + chunk).split("\n")
            partial = lines.pop()
            for line in lines:
                found = dib.phase(line)
                if found:
                    self.set(name, "building", found)
            with self._lock:  # the elapsed column; other builds redraw too
                if self._live is not None:
                    self._live.update(self._table())
