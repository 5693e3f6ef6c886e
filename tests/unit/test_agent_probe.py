"""wait_for: how often a failing check is tried, on a clock the test drives (no real waiting)."""

from __future__ import annotations

import pytest

from firstboot import probe
from firstboot.probe import ProbeFailed, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 3))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(probe.time, "monotonic", lambda: c.now)
    monkeypatch.setattr(probe.time, "sleep", c.sleep)
    return c


def failing(clock: Clock, takes: float, tries: list[float]):
    def attempt() -> str:
        tries.append(clock.now)
        clock.now += takes
        raise ProbeFailed("GET http://10.10.0.21:9100/metrics: TimeoutError: timed out")

    return attempt


def test_a_try_that_timed_out_is_not_repeated_at_once(clock: Clock) -> None:
    """A scrape the peer keeps computing after the client gave up: asking again at once stacked them."""
    tries: list[float] = []
    with pytest.raises(ProbeFailed, match="still failing after 60s"):
        wait_for(failing(clock, 15.0, tries), "node exporter answers", deadline=60, interval=0.5)
    assert tries == [0.0, 30.0, 60.0]  # at most half the time spent asking
    assert clock.slept == [15.0, 15.0]


def test_a_quick_refusal_is_retried_at_the_interval(clock: Clock) -> None:
    tries: list[float] = []
    with pytest.raises(ProbeFailed):
        wait_for(failing(clock, 0.0, tries), "port open", deadline=2, interval=0.5)
    assert tries == [0.0, 0.5, 1.0, 1.5, 2.0] and set(clock.slept) == {0.5}


def test_a_probe_that_passes_returns_its_answer(clock: Clock) -> None:
    tries: list[float] = []
    answers = iter([False, True])

    def flaky() -> str:
        tries.append(clock.now)
        if not next(answers):
            raise ProbeFailed("not yet")
        return "HTTP 200"

    assert wait_for(flaky, "app", deadline=10) == "HTTP 200" and tries == [0.0, 0.5]
