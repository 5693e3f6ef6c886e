"""The retry layer over every AWS call: which failures are retried, how long it waits, what the error says.

The failures are botocore's own exception types built from the error responses AWS sends."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from kiln.aws.calls import AwsCallError, Caller, RetryPolicy, classify


def client_error(code: str, status: int, *, sdk_retries: int = 0, op: str = "PutSnapshotBlock") -> ClientError:
    response = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": sdk_retries},
    }
    return ClientError(response, op)


def failing(*errors: BaseException, result: object = None):
    """A call that raises the given errors in turn, then returns `result`; counts its calls."""
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("RequestThrottledException", 400), "throttle"),
        (client_error("RequestLimitExceeded", 503), "throttle"),
        (client_error("SomethingNew", 429), "throttle"),
        (client_error("InternalError", 500), "transient"),
        (client_error("Whatever", 502), "transient"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "transient"),
        (client_error("ValidationException", 400), "fatal"),
        (client_error("UnauthorizedOperation", 403), "fatal"),
    ],
)
def test_classify(error, kind):
    assert classify(error)[0] == kind


def test_throttling_is_retried_with_growing_bounded_delays_then_succeeds():
    pauses: list[float] = []
    caller = Caller(RetryPolicy(attempts=6, base=1.0, cap=4.0), sleep=pauses.append)
    fn, calls = failing(*[client_error("ThrottlingException", 400, sdk_retries=2)] * 5, result={"ok": 1})

    assert caller.call("ebs.StartSnapshot", fn) == {"ok": 1}
    assert len(calls) == 6 and len(pauses) == 5
    assert all(0 <= p <= min(4.0, 2**i) for i, p in enumerate(pauses))
    assert caller.retries == 5 + 5 * 2 and caller.throttled == 5


def test_attempts_are_bounded_and_the_error_names_the_call_and_counts_every_try():
    caller = Caller(RetryPolicy(attempts=3, base=0.0), sleep=lambda _s: None)
    fn, calls = failing(*[client_error("RequestLimitExceeded", 503, sdk_retries=2)] * 10)

    with pytest.raises(AwsCallError) as caught:
        caller.call("ec2.RegisterImage", fn)
    assert len(calls) == 3
    assert (
        str(caught.value)
        == "ec2.RegisterImage failed after 9 attempts: RequestLimitExceeded: RequestLimitExceeded happened"
    )


def test_a_fatal_error_is_not_retried():
    caller = Caller(RetryPolicy(base=0.0), sleep=lambda _s: pytest.fail("slept"))
    fn, calls = failing(client_error("ValidationException", 400))
    with pytest.raises(AwsCallError, match=r"^ebs.PutSnapshotBlock \(block 3\) failed: ValidationException"):
        caller.call("ebs.PutSnapshotBlock (block 3)", fn, idempotent=True)
    assert len(calls) == 1


def test_transient_failures_are_retried_only_when_the_call_is_safe_to_repeat():
    caller = Caller(RetryPolicy(base=0.0), sleep=lambda _s: None)
    fn, calls = failing(client_error("InternalError", 500), result="done")
    with pytest.raises(AwsCallError, match="InternalError"):
        caller.call("ec2.RegisterImage", fn)
    assert len(calls) == 1

    fn, calls = failing(client_error("InternalError", 500), EndpointConnectionError(endpoint_url="x"), result="done")
    assert caller.call("ebs.PutSnapshotBlock", fn, idempotent=True) == "done" and len(calls) == 3


def test_no_attempt_starts_past_the_deadline():
    caller = Caller(RetryPolicy(attempts=100, base=10.0, cap=10.0, deadline=0.5), sleep=lambda _s: None)
    fn, calls = failing(*[client_error("SlowDown", 503)] * 100)
    with pytest.raises(AwsCallError, match=r"gave up after 0s|gave up after 1s"):
        caller.call("ec2.DescribeImages", fn, idempotent=True)
    assert len(calls) < 100


def test_the_botocore_config_has_timeouts_and_standard_retries():
    config = RetryPolicy(connect_timeout=3, read_timeout=7, sdk_attempts=4).botocore_config(pool=20)
    assert (config.connect_timeout, config.read_timeout, config.max_pool_connections) == (3, 7, 20)
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
