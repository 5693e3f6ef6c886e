"""`firstboot status`: the timeline of steps, and for a failure the reason and the next action."""

from __future__ import annotations

import time

from firstboot.paths import Paths
from firstboot.redact import redact, register_secrets
from firstboot.report import EventQueue
from firstboot.state import STEPS, ConvergeState, State
from kiln.bundle import Bundle, BundleError

NOT_STARTED, DONE, FAILED, IN_PROGRESS = 3, 0, 1, 2


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


def render(paths: Paths) -> tuple[str, int]:
    _load_cached_secrets(paths)
    if not paths.state.exists():
        return f"firstboot: not run yet on this host (no {paths.state})", NOT_STARTED
    state = State.load(paths.state)
    failed = state.failed_step()
    if state.outcome == "done":
        head, code = f"provisioned: {state.host} is a member of the cluster", DONE
    elif failed:
        head, code = f"FAILED at step {failed}", FAILED
    else:
        running = state.interrupted()
        head = f"in progress (step {running[0]})" if running else "in progress"
        code = IN_PROGRESS
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
    return redact("\n".join(lines)), code
