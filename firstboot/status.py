"""`firstboot status [--json] [--wait [--timeout S]]`: the timeline of steps, and for a failure the reason and the
next action; as JSON for a script (`summary`); or once the agent finished (`wait`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from firstboot.paths import Paths
from firstboot.redact import redact, register_secrets
from firstboot.report import EventQueue
from firstboot.state import STEPS, ConvergeState, State
from kiln.bundle import Bundle, BundleError

# Exit codes (docs/agent.md, `firstboot status --help`); 2 is argparse's, for a usage error.
DONE, FAILED, USAGE, IN_PROGRESS, NOT_STARTED = 0, 1, 2, 3, 4
NAMES = {DONE: "provisioned", FAILED: "failed", IN_PROGRESS: "in-progress", NOT_STARTED: "not-started"}
WAIT_TIMEOUT = 1800.0  # seconds --wait waits by default: a first boot takes minutes, a db replica's join the longest
WAIT_INTERVAL = 1.0  # seconds between two looks at the state file


def _load_cached_secrets(paths: Paths) -> None:
    """Secrets of a cached bundle are masked here too, in case a reason quoted one."""
    try:
        register_secrets(Bundle.from_json(paths.bundle_body.read_bytes()))
    except (OSError, BundleError):
        pass


def _converge_lines(paths: Paths) -> list[str]:
    """What `firstboot converge` left: the generation this host runs, its last error, whether it is retired."""
    lines = []
    if paths.converge_state.exists():
        conv = ConvergeState.load(paths.converge_state)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(conv.applied_at)) if conv.applied_at else "?"
        lines += ["", f"converge: runs generation {conv.generation} (applied {since})"]
        if conv.last_error:
            lines.append("  last error: " + conv.last_error.replace("\n", "\n    "))
    if paths.retired.exists():
        lines.append(f"converge: RETIRED: the server revoked this host's key ({paths.retired}); converge stopped")
    return lines


def _code(state: State) -> int:
    if state.outcome == "done":
        return DONE
    return FAILED if state.failed_step() else IN_PROGRESS


def code(paths: Paths) -> int:
    """The exit code `status` gives for the state as it is now."""
    return _code(State.load(paths.state)) if paths.state.exists() else NOT_STARTED


def render(paths: Paths) -> tuple[str, int]:
    _load_cached_secrets(paths)
    if not paths.state.exists():
        return f"firstboot: not run yet on this host (no {paths.state})", NOT_STARTED
    state = State.load(paths.state)
    failed = state.failed_step()
    result = _code(state)
    if result == DONE:
        head = f"provisioned: {state.host} is a member of the cluster"
    elif result == FAILED:
        head = f"FAILED at step {failed}"
    else:
        running = state.interrupted()
        head = f"in progress (step {running[0]})" if running else "in progress"
    lines = [f"firstboot status: {head}"]
    if state.url:
        lines.append(
            f"  host {state.host or '?'} ({state.mac or 'MAC unknown'}), server {state.url} from the {state.source}"
        )
    lines.append(f"  {'step':<9} {'outcome':<8} {'duration':>9}  {'finished':<20}  detail")
    for name in STEPS:
        rec = state.steps[name]
        duration = f"{rec.duration:.2f}s" if rec.duration is not None else ""
        attempts = f" (attempt {rec.attempts})" if rec.attempts > 1 else ""
        lines.append(
            f"  {name:<9} {rec.outcome:<8} {duration:>9}  {rec.finished or rec.started or '':<20}  "
            f"{rec.detail}{attempts}"
        )
    if failed:
        rec = state.steps[failed]
        lines += ["", f"reason: {rec.detail}", f"next:   {rec.next_action}"]
    lines += _converge_lines(paths)
    queued = len(EventQueue(paths.events).pending())
    if queued:
        lines.append(f"\n{queued} events queued for the server in {paths.events}")
    return redact("\n".join(lines)), result


def _redacted(value: Any) -> Any:
    """Every text of the summary through the redactor (each one: a secret is masked before JSON escapes it)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def summary(paths: Paths) -> dict[str, Any]:
    """What `status --json` prints (docs/agent.md lists the fields): the same facts as the text, for a script."""
    _load_cached_secrets(paths)
    exists = paths.state.exists()
    state = State.load(paths.state) if exists else State()
    status_code = _code(state) if exists else NOT_STARTED
    failed = state.failed_step()
    running = state.interrupted()
    converge = None
    if paths.converge_state.exists():
        conv = ConvergeState.load(paths.converge_state)
        converge = {"generation": conv.generation, "applied_at": conv.applied_at, "last_error": conv.last_error}
    data = {
        "status": NAMES[status_code],
        "exit_code": status_code,
        "host": state.host or None,
        "mac": state.mac or None,
        "server": state.url or None,
        "source": state.source or None,
        "updated": state.updated or None,
        "running_step": running[0] if running and status_code == IN_PROGRESS else None,
        "failed_step": failed if status_code == FAILED else None,
        "reason": state.steps[failed].detail if failed and status_code == FAILED else None,
        "next": state.steps[failed].next_action if failed and status_code == FAILED else None,
        "steps": [
            {
                "name": name,
                "outcome": rec.outcome,
                "started": rec.started,
                "finished": rec.finished,
                "duration": rec.duration,
                "attempts": rec.attempts,
                "detail": rec.detail,
            }
            for name, rec in ((n, state.steps[n]) for n in STEPS)
        ],
        "converge": converge,
        "retired": paths.retired.exists(),
        "queued_events": len(EventQueue(paths.events).pending()),
    }
    return dict(_redacted(data))


def to_json(paths: Paths) -> tuple[str, int]:
    data = summary(paths)
    return json.dumps(data, indent=2), int(data["exit_code"])


def wait(
    paths: Paths,
    timeout: float,
    *,
    interval: float = WAIT_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Look at the state file every `interval` s until the agent finished (provisioned or failed) or `timeout` s
    passed; the exit code of the last look (IN_PROGRESS or NOT_STARTED at the timeout). A failed run is reported
    as it stands, though systemd starts the agent again a minute later (firstboot.service's Restart=on-failure)."""
    deadline = clock() + max(0.0, timeout)
    while True:
        now_code = code(paths)
        left = deadline - clock()
        if now_code in (DONE, FAILED) or left <= 0:
            return now_code
        sleep(min(interval, left))
