"""Roll the planned batches: before each batch, the refusal check against the tier's health now; then every host
of the batch through its phases (side by side), recording each phase in the state file; stop after the batch where
a host failed, that host left as it is (out of rotation), the batches after it untouched.

    outcome = roll(job, view)   -> Outcome(rolled, failed, refused)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kiln.roll import state as st
from kiln.roll.plan import refusal


@dataclass(frozen=True)
class Phase:
    name: str  # drain, rearm, power, install, health, ready, ...
    act: Callable[[], None]  # raises an exception whose message names the host when the phase fails


class View(Protocol):
    def phase(self, host: str, name: str, eta: float | None) -> None: ...
    def done(self, host: str, seconds: float) -> None: ...
    def failed(self, host: str, error: str) -> None: ...


@dataclass
class Job:
    path: Path  # the state file
    state: st.RollState
    tier: Sequence[str]  # every host of the role (for the refusal)
    phases: Callable[[str], list[Phase]]  # a host's phases, in order
    healthy: Callable[[], set[str]]  # the tier's hosts healthy now
    allow_outage: bool = False


@dataclass
class Outcome:
    rolled: list[str] = field(default_factory=list)  # done in this run
    failed: str | None = None  # the host that failed (its error is in the state)
    refused: str | None = None  # why the next batch was not started

    @property
    def ok(self) -> bool:
        return self.failed is None and self.refused is None


def _named(host: str, error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if text.startswith(f"{host}:") or f" {host}" in text else f"{host}: {text}"


def roll(job: Job, view: View) -> Outcome:
    """Roll what is left of job.state. Returns at the first refusal or after the batch with a failed host."""
    lock = threading.Lock()
    outcome = Outcome()

    def save() -> None:
        with lock:
            st.save(job.path, job.state)

    def one(host: str) -> bool:
        run = job.state.hosts[host]
        run.status, run.error = st.RUNNING, ""
        began = time.monotonic()
        try:
            for phase in job.phases(host):
                run.phase = phase.name
                save()
                view.phase(host, phase.name, job.state.eta(host))
                phase.act()
        except Exception as e:  # every failure of a phase stops the roll at this host, whatever raised it
            run.status, run.error = st.FAILED, _named(host, e)
            save()
            view.failed(host, run.error)
            return False
        run.status, run.seconds = st.DONE, time.monotonic() - began
        job.state.timings[host] = run.seconds
        save()
        view.done(host, run.seconds)
        return True

    for batch in job.state.remaining():
        todo = [h for h in batch if job.state.hosts[h].status != st.DONE]
        if not job.allow_outage:
            try:
                why = refusal(job.state.role, job.tier, todo, job.healthy())
            except Exception as e:  # no answer is no proof the tier stays up: refuse, naming what did not answer
                why = f"cannot tell whether the {job.state.role} tier stays healthy without {', '.join(todo)}: {e}"
            if why:
                outcome.refused = why
                return outcome
        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            results = dict(zip(todo, pool.map(one, todo), strict=True))
        outcome.rolled += [h for h in todo if results[h]]
        failed = [h for h in todo if not results[h]]
        if failed:
            outcome.failed = failed[0]
            return outcome
    return outcome
