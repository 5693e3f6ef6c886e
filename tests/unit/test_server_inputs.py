"""What the server accepts from clients (MACs, event bodies) and the host state machine."""

from __future__ import annotations

import json

import pytest

from kiln.server.inputs import MAX_DETAIL_CHARS, BadInput, parse_event, parse_mac
from kiln.server.states import STEPS, State, next_state, progress, step_progress


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("52:54:00:10:00:11", "52:54:00:10:00:11"),
        ("52-54-00-AB-CD-EF", "52:54:00:ab:cd:ef"),
        (" 52:54:00:10:00:11 ", "52:54:00:10:00:11"),
    ],
)
def test_macs_are_normalised(given: str, expected: str) -> None:
    assert parse_mac(given) == expected


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "52:54:00:10:00",
        "52:54:00:10:00:11:22",
        "52:54:00-10:00:11",
        "5254.0010.0011",
        "g2:54:00:10:00:11",
        "52:54:00:10:00:1\n",
    ],
)
def test_malformed_macs_say_what_is_expected(bad: str | None) -> None:
    with pytest.raises(BadInput, match="mac|MAC"):
        parse_mac(bad)


def test_a_full_event_parses() -> None:
    event = parse_event(
        b'{"step": "join", "status": "ok", "detail": "both threads up", "at": "2026-11-23T10:00:00Z", "duration": 2}'
    )
    assert (event.step, event.status, event.detail, event.at, event.duration) == (
        "join",
        "ok",
        "both threads up",
        "2026-11-23T10:00:00Z",
        2.0,
    )


def test_optional_fields_default() -> None:
    event = parse_event(b'{"step": "install", "status": "start"}')
    assert event.detail == "" and event.at is None and event.duration is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"\x80", "not valid JSON"),
        (b'"install"', "$: 'install' is not of type 'object'"),
        (b'{"status": "ok"}', "'step' is a required property"),
        (b'{"step": "pxe", "status": "ok"}', "$.step: 'pxe' is not one of"),  # the server's own step
        (b'{"step": "install", "status": "OK"}', "$.status"),
        (b'{"step": "install", "status": "ok", "detail": 5}', "$.detail: 5 is not of type 'string'"),
        (json.dumps({"step": "install", "status": "ok", "detail": "x" * (MAX_DETAIL_CHARS + 1)}).encode(), "$.detail"),
        (b'{"step": "install", "status": "ok", "duration": "1s"}', "$.duration"),
        (b'{"step": "install", "status": "ok", "host": "db1"}', "Additional properties are not allowed ('host'"),
    ],
)
def test_bad_events_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_event(body)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("step", "status", "state"),
    [
        ("pxe", "ok", State.booting),
        ("install", "start", State.installing),
        ("install", "ok", State.booting),  # rebooting into the installed disk
        ("fetch", "start", State.configuring),
        ("join", "ok", State.configuring),
        ("done", "start", State.configuring),
        ("done", "ok", State.joined),
        ("install", "fail", State.failed),
        ("checks", "fail", State.failed),
    ],
)
def test_state_machine(step: str, status: str, state: State) -> None:
    assert next_state(step, status) is state


def test_progress_counts_steps_done() -> None:
    assert progress(-1) == 0
    assert progress(STEPS.index("install")) == 10
    assert progress(STEPS.index("done")) == 100


def test_a_running_step_has_its_own_progress_when_its_detail_counts() -> None:
    """The PXE installer's report_progress events ("writing: N of M MB", "checking: N of M MB")."""
    assert step_progress("start", "writing: 300 of 851 MB") == 35
    assert step_progress("start", "checking: 851 of 851 MB") == 100
    assert step_progress("start", "writing web.raw to /dev/vda (851 MB of data in 4096 MB)") is None
    assert step_progress("ok", "writing: 300 of 851 MB") is None, "a finished step has no progress of its own"
    assert step_progress("start", "writing: 3 of 0 MB") is None
    assert step_progress("start", None) is None
