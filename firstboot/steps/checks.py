"""The checks step: the bundle's health checks (http, tcp, command), each given a bounded time to pass."""

from __future__ import annotations

from firstboot.errors import StepFailed
from firstboot.probe import ProbeFailed, http_ok, tcp_open, wait_for
from firstboot.steps.context import Outcome, StepContext
from kiln.run import CommandError, run


def _probe(check: dict[str, object]):  # type: ignore[no-untyped-def]
    kind = check["kind"]
    if kind == "http":
        return lambda: http_ok(str(check["url"]))
    if kind == "tcp":
        return lambda: tcp_open(str(check["host"]), int(check["port"]))  # type: ignore[call-overload]
    if kind == "command":

        def command() -> str:
            try:
                run([str(a) for a in check["argv"]], timeout=30)  # type: ignore[attr-defined]
            except CommandError as e:
                raise ProbeFailed(str(e)) from None
            return "exit 0"

        return command
    raise StepFailed(f"unknown check kind {kind!r}", "update the agent (./inv freeze, rebuild the image)")


def checks(ctx: StepContext) -> Outcome:
    if not ctx.live:
        return Outcome("skipped (offline)")
    passed = []
    for check in ctx.bundle.get("checks", []):
        try:
            wait_for(_probe(check), str(check["name"]), ctx.tuning.check_deadline)
        except ProbeFailed as e:
            raise StepFailed(
                f"check failed: {e}", f"see why '{check['name']}' fails (journalctl), fix it, then run `firstboot run`"
            ) from None
        passed.append(str(check["name"]))
    return Outcome(f"{len(passed)} checks passed: {', '.join(passed)}")
