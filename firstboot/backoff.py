"""Bounded exponential backoff with full jitter and a total deadline; every retry is logged with its reason."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from firstboot.log import LOG

T = TypeVar("T")


class Retry(Exception):
    """Raised by an attempt that may succeed later; its text is the reason logged."""


class DeadlineExceeded(Exception):
    def __init__(self, what: str, attempts: int, last: str) -> None:
        super().__init__(f"{what}: gave up after {attempts} attempts; last error: {last}")
        self.attempts = attempts
        self.last = last


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    deadline: float = 600.0  # seconds, for all attempts together

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Full jitter: attempt n waits uniform(initial/2, min(cap, initial * factor**n))."""
        rng = rng or random.Random()
        n = 0
        while True:
            ceiling = min(self.cap, self.initial * self.factor**n)
            yield rng.uniform(min(self.initial / 2, ceiling), ceiling)
            n += 1


def retry(
    attempt: Callable[[], T],
    what: str,
    backoff: Backoff,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Call `attempt` until it returns; `Retry` means wait and try again, until the deadline passes."""
    end = clock() + backoff.deadline
    attempts = 0
    for delay in backoff.delays(rng):
        attempts += 1
        try:
            return attempt()
        except Retry as e:
            left = end - clock()
            if left <= 0:
                raise DeadlineExceeded(what, attempts, str(e)) from None
            delay = min(delay, left)
            LOG.warning("%s: attempt %d failed: %s; retrying in %.1fs (%.0fs left)", what, attempts, e, delay, left)
            sleep(delay)
    raise AssertionError("unreachable")
