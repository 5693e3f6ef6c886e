"""The host state machine. A host moves through waiting → booting → installing → booting → configuring →
joined, or to failed from any step; a step started again after a failure resumes the host."""

from __future__ import annotations

import re
from enum import StrEnum


class State(StrEnum):
    waiting = "waiting"  # armed, nothing heard yet
    booting = "booting"  # served the installer script, or rebooting into the installed disk
    installing = "installing"  # the PXE installer is writing the image
    configuring = "configuring"  # the first-boot agent is at work
    joined = "joined"  # the agent reported done
    failed = "failed"  # a step reported fail
    retired = "retired"  # roles.yaml no longer lists it: drained, its credential revoked (./inv apply)


# Steps in the order a host goes through them: the installer's, then the agent's.
STEPS = ("install", "fetch", "network", "files", "secrets", "firewall", "services", "join", "checks", "done")
CONVERGE_STEP = "converge"  # a joined host applying a newer generation: never moves its state
REPORTED_STEPS = (*STEPS, CONVERGE_STEP)  # what hosts may POST; "pxe" is recorded by the server itself
PXE_STEP = "pxe"
STATUSES = ("start", "ok", "fail")


def next_state(step: str, status: str) -> State:
    if status == "fail":
        return State.failed
    if step == PXE_STEP:
        return State.booting
    if step == "install":
        return State.installing if status == "start" else State.booting
    if step == "done" and status == "ok":
        return State.joined
    return State.configuring


def step_index(step: str) -> int:
    """Position of a step in STEPS, -1 for the server's own pxe step."""
    return STEPS.index(step) if step in STEPS else -1


def progress(max_ok_index: int) -> int:
    """Percent of the steps done, from the furthest step reported ok."""
    return round(100 * (max_ok_index + 1) / len(STEPS))


# "writing: 300 of 851 MB", "checking: 120 of 300 MB": what the PXE installer reports while it works
_AMOUNT = re.compile(r"(\d+(?:\.\d+)?) of (\d+(?:\.\d+)?) (?:[KMGT]i?B|files|bytes)\b")


def step_progress(status: str, detail: str | None) -> int | None:
    """Percent of its own work a running step has done, when its detail says ("N of M MB"); None otherwise."""
    if status != "start" or not detail:
        return None
    found = _AMOUNT.search(detail)
    if found is None:
        return None
    done, total = float(found[1]), float(found[2])
    if total <= 0:
        return None
    return max(0, min(100, int(100 * done / total)))
