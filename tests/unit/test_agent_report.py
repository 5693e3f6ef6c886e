"""Events queue on disk and reach the server later; reporting never blocks provisioning."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from firstboot.report import EventQueue, Reporter
from tests.unit.agent_support import http_stand_in, reply


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_events_stay_queued_while_the_server_is_down_and_go_out_in_order_later(tmp_path: Path) -> None:
    reporter = Reporter(EventQueue(tmp_path / "events"))
    reporter.target(f"http://127.0.0.1:{closed_port()}", "db1", None)
    reporter.start()
    started = time.monotonic()
    for step in ("fetch", "network", "files"):
        reporter.event(step, "start")
        reporter.event(step, "ok", "fine", 0.01)
    assert time.monotonic() - started < 0.5  # queueing is a local file write
    assert reporter.close(budget=1.0) == 6
    events = [json.loads(p.read_text()) for p in EventQueue(tmp_path / "events").pending()]
    assert [(e["step"], e["status"]) for e in events][:2] == [("fetch", "start"), ("fetch", "ok")]
    assert {"step", "status", "detail", "at"} <= events[1].keys() and events[1]["duration"] == 0.01

    with http_stand_in({("POST", "/v1/hosts/db1/events"): reply(201)}) as (url, seen):
        later = Reporter(EventQueue(tmp_path / "events"))
        later.target(url, "db1", None)
        assert later.flush()
    assert [json.loads(body)["step"] for _, _, body in seen] == [
        "fetch",
        "fetch",
        "network",
        "network",
        "files",
        "files",
    ]
    assert EventQueue(tmp_path / "events").pending() == []


def test_a_server_that_refuses_an_event_keeps_it_queued(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "events")
    queue.put("join", "fail", "primary down")
    with http_stand_in({("POST", "/v1/hosts/db1/events"): reply(500)}) as (url, seen):
        reporter = Reporter(queue)
        reporter.target(url, "db1", None)
        assert not reporter.flush()
    assert len(seen) == 1 and len(queue.pending()) == 1


def test_events_wait_until_the_host_name_is_known(tmp_path: Path) -> None:
    reporter = Reporter(EventQueue(tmp_path / "events"))
    reporter.event("fetch", "start")
    assert not reporter.flush() and len(reporter.queue.pending()) == 1
