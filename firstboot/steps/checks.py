"""The checks step: the bundle's health checks (http, tcp, command), each given a bounded time to pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from firstboot.errors import StepFailed
from firstboot.probe import ProbeFailed, http_ok, tcp_open, wait_for
from firstboot.steps.context import Outcome, StepContext
from kiln.bundle import Check, CommandCheck, HttpCheck, TcpCheck
from kiln.run import CommandError, run


def _command(argv: tuple[str, ...]) -> str:
    try:
        run(argv, timeout=30)
    except CommandError as e:
        raise ProbeFailed(str(e)) from None
    return "exit 0"


def probe(check: Check) -> Callable[[], str]:
    """What passes when the check does; raises ProbeFailed (with the reason) while it does not."""
    match check:
        case HttpCheck(url=url):
            return lambda: http_ok(url)
        case TcpCheck(host=host, port=port):
            return lambda: tcp_open(host, port)
        case CommandCheck(argv=argv):
            return lambda: _command(argv)
        case _:
            assert_never(check)


def checks(ctx: StepContext) -> Outcome:
    if not ctx.live:
        return Outcome("skipped (offline)")
    passed = []
    for check in ctx.bundle.checks:
        try:
            wait_for(probe(check), check.name, ctx.tuning.check_deadline)
        except ProbeFailed as e:
            raise StepFailed(
                f"check failed: {e}", f"see why '{check.name}' fails (journalctl), fix it, then run `firstboot run`"
            ) from None
        passed.append(check.name)
    return Outcome(f"{len(passed)} checks passed: {', '.join(passed)}")
