"""The roll's memory, state/roll.json: what it is rolling, each host's status and phase, and each host's time in
the last run (the ETA's source). Written after every change (atomically), so a roll stopped by a failure, Ctrl-C
or a crash resumes where it was: `./inv roll` again."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln.fsutil import write_atomic

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
IMAGE, REBOOT = "image", "reboot"  # what a roll does to a host: reinstall it, or only reboot it


class StateError(Exception):
    """The state file cannot be used as asked; the message names the file and what to do."""


@dataclass
class HostRun:
    status: str = PENDING  # PENDING, RUNNING, DONE or FAILED
    phase: str = ""  # the phase it is in (RUNNING), failed in (FAILED), or last finished
    error: str = ""  # FAILED: what failed, naming the host
    seconds: float = 0.0  # DONE: how long the host took


@dataclass
class RollState:
    role: str
    mode: str  # IMAGE or REBOOT
    batches: list[list[str]]
    hosts: dict[str, HostRun]
    started: float = field(default_factory=time.time)  # epoch seconds
    timings: dict[str, float] = field(default_factory=dict)  # host -> seconds its last finished roll took

    @classmethod
    def fresh(cls, role: str, mode: str, batches: list[list[str]], timings: dict[str, float]) -> RollState:
        return cls(role, mode, batches, {h: HostRun() for b in batches for h in b}, timings=dict(timings))

    def finished(self) -> bool:
        return all(r.status == DONE for r in self.hosts.values())

    def touched(self) -> bool:
        """Whether any host began (a roll refused before its first batch touched nothing)."""
        return any(r.status != PENDING for r in self.hosts.values())

    def remaining(self) -> list[list[str]]:
        """The batches with a host not done yet, in order (a failed host first in line again)."""
        return [b for b in self.batches if any(self.hosts[h].status != DONE for h in b)]

    def eta(self, host: str) -> float | None:
        """Seconds HOST is expected to take: its own time in the last run, else the mean of the others', else None."""
        if host in self.timings:
            return self.timings[host]
        return sum(self.timings.values()) / len(self.timings) if self.timings else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, data: dict[str, Any]) -> RollState:
        hosts = {name: HostRun(**run) for name, run in data["hosts"].items()}
        return cls(
            data["role"], data["mode"], [list(b) for b in data["batches"]], hosts, data["started"], data["timings"]
        )


def load(path: Path) -> RollState | None:
    """The state at PATH, or None when there is none; StateError when it is not a roll state."""
    try:
        return RollState.of(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise StateError(f"{path}: not a roll state ({e}); move it away to start a new roll") from None


def save(path: Path, state: RollState) -> None:
    write_atomic(path, (json.dumps(state.to_json(), indent=2) + "\n").encode(), mode=0o600)


def begin(path: Path, role: str, mode: str, batches: list[list[str]]) -> tuple[RollState, bool]:
    """The state this run works from and whether it resumes one: the unfinished roll of the same role and mode in
    PATH (its hosts and batches, not `batches`), else a fresh one keeping the last run's timings. StateError when
    an unfinished roll of another role or mode that touched a host is there: finish it first."""
    old = load(path)
    if old is not None and not old.finished() and ((old.role, old.mode) == (role, mode) or old.touched()):
        if (old.role, old.mode) != (role, mode):
            flag = " --reboot-only" if old.mode == REBOOT else ""
            left = ", ".join(h for b in old.remaining() for h in b)
            raise StateError(
                f"{path}: a roll of {old.role}{flag} is unfinished ({left} left): finish it with "
                f"./inv roll --role {old.role}{flag}, or remove the file to drop it"
            )
        for run in old.hosts.values():
            if run.status == RUNNING:  # stopped mid-host (Ctrl-C, a crash): that host starts over
                run.status = PENDING
        return old, True
    state = RollState.fresh(role, mode, batches, old.timings if old else {})
    save(path, state)
    return state, False
