"""What the monitor hands its reporter and when (a changed view, an unchanged one every VIEW_EVERY seconds, events),
that a reporter that raises never stops it, and that a backup whose report fails still succeeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.db import backup, topology
from kiln.db.failover import Event
from kiln.db.replication import Seen
from kiln.db.report import VIEW_EVERY, Observed

UP = Seen("db1", "10.0.0.1", answered=True, read_only=False, binlog_pos="0-1-5")
DOWN = Seen("db1", "10.0.0.1", answered=False, error="timed out")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(topology.time, "monotonic", c)
    return c


def test_the_view_goes_when_it_changes_or_every_few_seconds_and_events_always(clock: Clock) -> None:
    got: list[tuple[Observed | None, list[Event]]] = []
    reporting = topology._Reporting(lambda view, events: got.append((view, list(events))))
    reporting([UP], 1.0, [])
    reporting([UP], 2.0, [])  # the same look a second later: nothing to send
    clock.now += VIEW_EVERY - 1
    reporting([UP], 3.0, [])
    assert [v.at for v, _ in got if v] == [1.0]
    fence = Event("fence", "db1", "fenced")
    reporting([UP], 4.0, [fence])  # an event goes at once, without the unchanged view
    assert got[-1] == (None, [fence])
    clock.now += 1
    reporting([UP], 5.0, [])  # VIEW_EVERY since the view was last sent: again, unchanged
    reporting([DOWN], 6.0, [])  # changed: at once
    assert [v.at for v, _ in got if v] == [1.0, 5.0, 6.0]
    assert got[-1][0] is not None and got[-1][0].payload()["hosts"][0]["role"] == "unreachable"


def test_a_reporter_that_raises_is_said_once_and_the_monitor_goes_on(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def broken(view: Observed | None, events: Any) -> None:
        calls.append(view)
        raise RuntimeError("no network")

    reporting = topology._Reporting(broken)
    for i in range(3):
        reporting([UP if i % 2 else DOWN], float(i), [])
    assert len(calls) == 3, "the view is offered again after a failure"
    assert capsys.readouterr().out.count("reporting failed (RuntimeError: no network)") == 1


def test_a_backup_whose_report_fails_still_succeeds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    manifest = {"id": "20261201T110000Z-db2", "host": "db2", "gtid": "0-1-9"}
    monkeypatch.setattr(backup, "take_backup", lambda *a, **k: manifest)
    monkeypatch.setattr(backup, "archive", lambda *a, **k: None)
    monkeypatch.setattr(backup, "expire", lambda *a, **k: [])

    class Store:
        def check(self) -> None:
            pass

    said: list[str] = []
    reported: list[dict[str, Any]] = []

    def report(m: dict[str, Any]) -> None:
        reported.append(m)
        raise OSError("connection refused")

    result = backup.run_backup(
        Store(),
        None,
        b"k" * 32,
        backup.Retention(),
        workdir=tmp_path,
        progress=said.append,
        report=report,
    )
    assert result == manifest and reported == [manifest]
    assert said == ["backup 20261201T110000Z-db2: not reported (OSError: connection refused)"]
