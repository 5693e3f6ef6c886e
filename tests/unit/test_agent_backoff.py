"""Bounded exponential backoff with jitter, a total deadline, every retry logged with its reason."""

from __future__ import annotations

import logging
import random

import pytest

from firstboot.backoff import Backoff, DeadlineExceeded, Retry, retry


def test_delays_grow_exponentially_with_jitter_and_stop_at_the_cap() -> None:
    delays = Backoff(initial=0.5, cap=30.0).delays(random.Random(1))
    first = [next(delays) for _ in range(12)]
    for n, d in enumerate(first):
        assert 0.25 <= d <= min(30.0, 0.5 * 2**n)
    assert max(first) <= 30.0
    assert len({round(d, 6) for d in first}) == len(first)  # jittered, not a fixed ladder
    assert sum(first[6:]) > sum(first[:6])  # later waits are longer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_retry_returns_once_the_attempt_succeeds_and_logs_each_reason(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    failures = iter(["connection refused", "HTTP 503"])

    def attempt() -> str:
        reason = next(failures, None)
        if reason:
            raise Retry(reason)
        return "bundle"

    with caplog.at_level(logging.WARNING, logger="firstboot"):
        assert retry(attempt, "fetch", Backoff(deadline=60), sleep=clock.sleep, clock=lambda: clock.now) == "bundle"
    assert len(clock.sleeps) == 2
    assert "attempt 1 failed: connection refused" in caplog.text
    assert "attempt 2 failed: HTTP 503" in caplog.text


def test_retry_gives_up_at_the_deadline_with_the_last_reason() -> None:
    clock = FakeClock()

    def attempt() -> None:
        raise Retry(f"refused at t={clock.now:.0f}")

    with pytest.raises(DeadlineExceeded) as e:
        retry(attempt, "fetch", Backoff(deadline=100), sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.now == pytest.approx(100)  # never sleeps past the deadline
    assert max(clock.sleeps) <= 30.0
    assert e.value.attempts >= 5
    assert "refused at t=100" in str(e.value)


def test_other_errors_are_not_retried() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        retry(attempt, "x", Backoff(deadline=10), sleep=lambda s: None)
    assert calls == [1]
