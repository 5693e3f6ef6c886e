"""The one step loop behind `firstboot run` and `firstboot apply`: fetch, the steps in order, done.

What differs between the two is a Policy: where the bundle comes from (the fetch slot), which steps run, what
is recorded and where each outcome is said. `firstboot.run` is the boot-time policy (resumable from state.json,
events to the server, live on the host); `firstboot.apply` the offline one (into a tree, a line per step).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Protocol, TypeVar

from firstboot.errors import RERUN, StepFailed
from firstboot.redact import redact
from firstboot.state import DONE, FETCH, STEPS
from firstboot.steps import checks, files, system
from firstboot.steps.context import Outcome, StepContext, StepFn
from firstboot.steps.fetch import Fetched
from firstboot.steps.join import join
from kiln.bundle import Bundle

# The steps between fetch and done, by their names in state.json (firstboot.state.STEPS gives the order).
STEP_FUNCTIONS: dict[str, StepFn] = {
    "network": files.network,
    "files": files.files,
    "secrets": files.secrets,
    "firewall": system.firewall,
    "services": system.services,
    "join": join,
    "checks": checks.checks,
}
# the steps that act on the running system (its firewall, its units, its peers) rather than on files
LIVE_STEPS = ("firewall", "services", "join", "checks")

OutcomeT = TypeVar("OutcomeT", bound=Outcome)


class Policy(Protocol):
    """What `run` and `apply` do differently around the same loop."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def resume(self) -> Bundle | None:
        """The bundle of a fetch step finished earlier, or None: the fetch step runs."""
        ...

    def fetch(self) -> Fetched:
        """The fetch slot: where the bundle comes from, verified."""
        ...

    def context(self, bundle: Bundle) -> StepContext: ...

    def wanted(self, name: str) -> bool:
        """Whether step `name` runs; a policy that skips a step says so where its user looks."""
        ...

    def begin(self, name: str) -> None: ...

    def succeeded(self, name: str, outcome: Outcome, duration: float) -> None: ...

    def failed(self, name: str, failure: StepFailed, duration: float) -> None: ...

    def done(self, ctx: StepContext) -> Outcome:
        """The last step: what marks the work finished, and its summary."""
        ...


def step(policy: Policy, name: str, fn: Callable[[], OutcomeT]) -> OutcomeT:
    """Run one step; any failure reaches the policy as a StepFailed with a reason and a next action."""
    policy.begin(name)
    started = time.monotonic()
    try:
        outcome = fn()
    except StepFailed as e:
        policy.failed(name, e, time.monotonic() - started)
        raise
    except Exception as e:  # anything unexpected still says what happened, and never with a secret in it
        failure = StepFailed(redact(f"{e.__class__.__name__}: {e}"), RERUN)
        policy.failed(name, failure, time.monotonic() - started)
        raise failure from None
    policy.succeeded(name, outcome, time.monotonic() - started)
    return outcome


def execute(policy: Policy, steps: Mapping[str, StepFn] | None = None) -> int:
    """Exit code 0 when every step the policy wants succeeded, 1 at the first that failed. `steps`: the steps
    between fetch and done, in order (default: the first boot's, STEP_FUNCTIONS in the order of STEPS)."""
    policy.start()
    try:
        bundle = policy.resume() or step(policy, FETCH, policy.fetch).bundle
        ctx = policy.context(bundle)
        order = steps if steps is not None else {n: STEP_FUNCTIONS[n] for n in STEPS if n not in (FETCH, DONE)}
        for name, fn in order.items():
            if not policy.wanted(name):
                continue
            outcome = step(policy, name, partial(fn, ctx))
            ctx.changed |= set(outcome.changed)
        step(policy, DONE, partial(policy.done, ctx))
        return 0
    except StepFailed:
        return 1
    finally:
        policy.stop()
