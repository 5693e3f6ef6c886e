"""Events queue on disk and reach the server later; reporting never blocks provisioning."""

from __future__ import annotations

import http.server
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from firstboot import credential as credential_module
from firstboot.credential import Credential
from firstboot.paths import Paths
from firstboot.report import EventQueue, Reporter
from firstboot.transport import tls_context
from kiln import signing
from tests.unit.agent_support import TOKEN, StandIn, bundle, http_stand_in, reply, tls_for_loopback


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


def test_an_event_the_server_will_never_take_is_dropped_and_holds_back_none_after_it(tmp_path: Path) -> None:
    """A server that does not know a field (here "generation", which converge events carry) answers 400: sending
    it again cannot help, and the events queued after it still go out."""
    queue = EventQueue(tmp_path / "events")
    queue.put("converge", "ok", "generation 2 applied", generation=2)
    queue.put("converge", "start", "applying generation 3", generation=3)

    answers = [reply(400, b'{"error": "additional properties are not allowed"}'), reply(201)]

    def strict(h: http.server.BaseHTTPRequestHandler) -> None:
        answers.pop(0)(h)

    with http_stand_in({("POST", "/v1/hosts/db1/events"): strict}) as (url, seen):
        reporter = Reporter(queue)
        reporter.target(url, "db1", None)
        assert reporter.flush()
    assert [json.loads(body)["generation"] for _, _, body in seen] == [2, 3] and queue.pending() == []


def test_events_wait_until_the_host_name_is_known(tmp_path: Path) -> None:
    reporter = Reporter(EventQueue(tmp_path / "events"))
    reporter.event("fetch", "start")
    assert not reporter.flush() and len(reporter.queue.pending()) == 1


def test_events_go_with_the_token_before_enrolment_and_signed_after(tmp_path: Path) -> None:
    ca, context = tls_for_loopback(tmp_path)
    (tmp_path / "ca.pem").write_bytes(ca)
    credential = Credential(Paths(tmp_path / "root"), token=TOKEN)
    credential.paths.state_dir.mkdir(parents=True)
    with StandIn(bundle(), signing.generate_private_key(), context).running() as server:
        reporter = Reporter(EventQueue(tmp_path / "events"), credential)
        reporter.target(server.url, "db1", tls_context(tmp_path / "ca.pem"))
        reporter.event("fetch", "start")
        assert reporter.flush()
        server.host_key = credential.public()  # the enrolment bound the key
        credential.host, credential.enrolled = "db1", True
        reporter.event("fetch", "ok")
        assert reporter.flush()
    assert [(by, e["status"]) for by, e in server.events] == [("token", "start"), ("key", "ok")]
    assert server.requests[0].authorization == f"Bearer {TOKEN}"
    assert server.requests[1].authorization.startswith("KilnHost host=db1, ts=")


def test_a_host_whose_clock_is_off_gets_its_signed_events_in_at_the_next_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed run may send events before any bundle request: the server's Date on the refusal sets the clock."""
    ca, context = tls_for_loopback(tmp_path)
    (tmp_path / "ca.pem").write_bytes(ca)
    real = time.time
    monkeypatch.setattr(credential_module, "time", SimpleNamespace(time=lambda: real() - 3600))  # an hour slow
    credential = Credential(Paths(tmp_path / "root"), host="db1", enrolled=True)
    credential.paths.state_dir.mkdir(parents=True)
    with StandIn(bundle(), signing.generate_private_key(), context).running() as server:
        server.host_key = credential.public()
        reporter = Reporter(EventQueue(tmp_path / "events"), credential)
        reporter.target(server.url, "db1", tls_context(tmp_path / "ca.pem"))
        reporter.event("files", "ok")
        assert not reporter.flush()  # signed with the host's clock: refused, kept
        assert reporter.flush()  # signed with the server's
    assert [r.status for r in server.requests] == [401, 201] and len(server.events) == 1
