"""`firstboot apply`, the offline policy: a bundle file (as rendered, or as served) into the tree at a root.

One line per step on stdout, nothing recorded. `--no-services` writes files only; live steps into a tree other
than / run only when named with `--only` (tests run them inside a network namespace).
"""

from __future__ import annotations

from pathlib import Path

from firstboot import agent
from firstboot.errors import StepFailed
from firstboot.owners import Owners
from firstboot.paths import Paths
from firstboot.redact import redact
from firstboot.state import DONE
from firstboot.steps.context import Outcome, StepContext, Tuning
from firstboot.steps.fetch import Fetched, from_file
from kiln.bundle import Bundle


class ApplyPolicy:
    def __init__(self, bundle_file: Path, root: Path, *, live: bool, only: tuple[str, ...], tuning: Tuning) -> None:
        self.bundle_file = bundle_file
        self.paths = Paths(root)
        self.live = live
        self.only = only
        self.tuning = tuning
        # The live steps act on the machine (and network namespace) the agent runs in. Into a tree other than /
        # they run only when named with --only: a stray apply must not load a default-drop firewall here.
        self.named_only = live and not self.paths.is_host
        self.changes = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def resume(self) -> Bundle | None:
        return None

    def fetch(self) -> Fetched:
        return from_file(self.bundle_file)

    def context(self, bundle: Bundle) -> StepContext:
        owners = Owners(self.paths.root, strict=False)
        return StepContext(self.paths, bundle, live=self.live, owners=owners, tuning=self.tuning)

    def wanted(self, name: str) -> bool:
        if self.only and name not in self.only:
            return False
        if name not in agent.LIVE_STEPS:
            return True
        if not self.live:
            print(f"{name:<9} skipped (--no-services)")
            return False
        if self.named_only and name not in self.only:
            print(f"{name:<9} skipped (the root is not /: name it with --only {name} to run it on this machine)")
            return False
        return True

    def begin(self, name: str) -> None:
        pass

    def succeeded(self, name: str, outcome: Outcome, duration: float) -> None:
        if name == DONE:
            print(redact(outcome.detail))
            return
        self.changes += len(outcome.changed)
        print(redact(f"{name:<9} {outcome.detail} ({duration:.2f}s)"))

    def failed(self, name: str, failure: StepFailed, duration: float) -> None:
        print(redact(f"{name:<9} FAILED: {failure.reason}\n          next: {failure.next_action}"))

    def done(self, ctx: StepContext) -> Outcome:
        what = f"{self.changes} changes" if self.changes else "unchanged"
        return Outcome(f"applied {ctx.bundle.host.name} to {self.paths.root}: {what}")


def apply(
    bundle_file: Path, root: Path, *, live: bool, only: tuple[str, ...] = (), tuning: Tuning | None = None
) -> int:
    """Apply a bundle file to the tree at `root`; print one line per step; exit code 0, or 1 at a failed step."""
    return agent.execute(ApplyPolicy(bundle_file, root, live=live, only=only, tuning=tuning or Tuning()))
