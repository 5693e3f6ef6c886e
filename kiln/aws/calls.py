"""Every AWS call goes through here: a botocore Config with timeouts and the SDK's own "standard"
retries, and above it a bounded, jittered exponential backoff of ours for throttling (and, for
calls that are safe to repeat, for transient failures), so that a burst of throttling outlasts the
SDK's few attempts and its retry quota. A call that still fails raises AwsCallError naming it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, WaiterError

T = TypeVar("T")

# The error codes AWS services use for throttling (the list botocore's standard retry mode treats as throttles).
THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalServerException",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
    }
)
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # ours; each one is up to `sdk_attempts` tries inside botocore
    base: float = 1.0  # seconds; delay before our retry n is uniform in [0, min(cap, base * 2**n)]
    cap: float = 20.0
    deadline: float = 600.0  # no new attempt of one call starts after this many seconds
    sdk_attempts: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.cap, self.base * 2**retry)

    def botocore_config(self, *, pool: int = 10) -> Config:
        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"mode": "standard", "total_max_attempts": self.sdk_attempts},
            max_pool_connections=pool,
        )


class AwsCallError(Exception):
    """An AWS call that failed for good: which call, the error code and message, how many tries (ours and the SDK's)."""

    def __init__(self, call: str, code: str, message: str, attempts: int) -> None:
        self.call, self.code, self.message, self.attempts = call, code, message, attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{call} failed{tries}: {code}: {message}")


def classify(exc: BaseException) -> tuple[str, str, str]:
    """(kind, code, message) of a botocore failure; kind is throttle, transient or fatal."""
    if isinstance(exc, ClientError):
        err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        code, message, status = str(err.get("Code", "")), str(err.get("Message", "")), meta.get("HTTPStatusCode")
    elif isinstance(exc, WaiterError):
        err = (exc.last_response or {}).get("Error", {})
        code, message, status = str(err.get("Code", "WaiterError")), str(err.get("Message", exc)), None
        if "Code" not in err:
            return "fatal", code, str(exc)
    elif isinstance(exc, ConnectionError | HTTPClientError):
        return "transient", type(exc).__name__, str(exc)
    else:
        return "fatal", type(exc).__name__, str(exc)
    if code in THROTTLING or status == 429:
        return "throttle", code, message
    if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
        return "transient", code, message
    return "fatal", code, message


@dataclass
class Caller:
    """Runs calls under a RetryPolicy and counts what was retried (thread-safe)."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    retries: int = 0  # ours and the SDK's, over every call
    throttled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def call(self, name: str, fn: Callable[[], T], *, idempotent: bool = False) -> T:
        """fn() with retries; `name` (e.g. "ebs.PutSnapshotBlock (block 17)") goes into the error.

        Throttling is always retried: AWS rejected the request without acting on it. Other transient
        failures (5xx, timeouts, dropped connections) are retried here only when repeating is safe.
        """
        started = time.monotonic()
        attempt = tries = 0  # ours; tries also counts the SDK's own retries inside each of ours
        while True:
            attempt += 1
            try:
                result = fn()
            except (ClientError, BotoCoreError) as exc:
                kind, code, message = classify(exc)
                tries += 1 + self._count(exc, throttled=kind == "throttle")
                retry = kind == "throttle" or (kind == "transient" and idempotent)
                if not retry or attempt >= self.policy.attempts:
                    raise AwsCallError(name, code, message, tries) from exc
                pause = self.policy.delay(attempt - 1)
                if time.monotonic() - started + pause > self.policy.deadline:
                    raise AwsCallError(
                        name, code, f"{message} (gave up after {self.policy.deadline:.0f}s)", tries
                    ) from exc
                self.sleep(pause)
                with self._lock:
                    self.retries += 1
                continue
            self._count(result)
            return result

    def _count(self, outcome: Any, *, throttled: bool = False) -> int:
        """Adds the SDK's retries behind this outcome to the totals, and returns them."""
        response = outcome.response if isinstance(outcome, ClientError) else outcome
        sdk = response.get("ResponseMetadata", {}).get("RetryAttempts", 0) if isinstance(response, dict) else 0
        with self._lock:
            self.retries += sdk
            self.throttled += int(throttled)
        return int(sdk)
