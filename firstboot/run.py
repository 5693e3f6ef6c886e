"""`firstboot run`, the boot-time policy: resumable from state.json, every step reported to the server, live on /.

State is on disk after every transition (a step found "running" was interrupted and is redone, "ok" steps are
not); events are queued on disk first and sent by a background thread; a done host does nothing and exits 0.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from firstboot import agent, lock
from firstboot.backoff import Backoff
from firstboot.credential import Credential
from firstboot.errors import StepFailed
from firstboot.log import LOG
from firstboot.owners import Owners
from firstboot.paths import Paths
from firstboot.report import EventQueue, Reporter
from firstboot.sources import Settings, Source
from firstboot.state import FETCH, ConvergeState, State
from firstboot.steps.context import Outcome, StepContext, Tuning
from firstboot.steps.fetch import Expect, FetchContext, Fetched, baked_cluster_id, cached_bundle, forget
from firstboot.steps.fetch import fetch as fetch_step
from firstboot.transport import tls_context
from kiln.bundle import Bundle
from kiln.fsutil import remove_stale_temps, write_atomic


@dataclass(frozen=True)
class RunOptions:
    paths: Paths = field(default_factory=Paths)
    sources: Settings = field(default_factory=Settings)
    tuning: Tuning = field(default_factory=Tuning)
    fetch: Backoff = field(default_factory=Backoff)


class RunPolicy:
    """One `firstboot run`: state saved after every transition, events queued for the server."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.paths = opts.paths
        self.state = State.load(self.paths.state)
        self.credential = Credential(self.paths, host=self.state.host, enrolled=self.state.enrolled)
        self.reporter = Reporter(EventQueue(self.paths.events), self.credential)
        self.current = ""  # the step running: changes it notes are recorded under it

    def save(self) -> None:
        self.state.save(self.paths.state)

    def start(self) -> None:
        for name in self.state.interrupted():
            LOG.warning("step %s was interrupted (crash or power cut); redoing it", name)
        for directory in (self.paths.state_dir, self.paths.events):
            remove_stale_temps(directory)
        self.reporter.start()

    def stop(self) -> None:
        left = self.reporter.close()
        if left:
            LOG.info("%d events stay queued in %s for the server", left, self.paths.events)

    # the fetch slot
    def resume(self) -> Bundle | None:
        if self.state.steps[FETCH].outcome != "ok":
            return None
        try:
            bundle = cached_bundle(self.paths, self.state.mac, self._expect())
        except StepFailed as e:
            LOG.warning("the fetched bundle is no longer usable (%s); fetching it again", e.reason)
            return None
        if bundle is None:
            LOG.warning("the fetched bundle is no longer usable; fetching it again")
            return None
        self._target()
        return bundle

    def fetch(self) -> Fetched:
        ctx = FetchContext(
            self.paths,
            self.credential,
            self.opts.sources,
            self.opts.fetch,
            expect=self._expect(),
            found=self._found,
            enrolled=self._enrolled,
            verified=self._verified,
        )
        return fetch_step(ctx)

    def _expect(self) -> Expect:
        """The cluster baked into the image (else the one this host accepted first) and the newest generation."""
        return Expect(
            cluster_id=baked_cluster_id(self.paths) or self.state.cluster_id,
            generation=self.state.generation,
            now=self.credential.now,
        )

    def _enrolled(self, host: str) -> None:
        self.state.host, self.state.enrolled = host or self.state.host, True
        self.save()
        self._target()

    def _found(self, source: Source) -> None:
        self.state.url, self.state.source = source.url, source.origin
        if not self.state.enrolled:  # once enrolled, the host is who the server named (its requests sign as that)
            self.state.host = source.host or self.state.host
        self._target()

    def _verified(self, bundle: Bundle) -> None:
        self.state.host, self.state.mac = bundle.host.name, bundle.host.mac
        self.state.cluster_id = self.state.cluster_id or bundle.cluster_id
        self.state.generation = max(self.state.generation, bundle.generation)
        self.credential.host = bundle.host.name
        self._target()

    def _target(self) -> None:
        """Point the reporter at the server once the host's name is known."""
        try:
            context = tls_context(self.paths.ca_pem)
        except Exception:  # the fetch reports a missing CA; events then stay queued
            return
        if self.state.host:
            self.reporter.target(self.state.url, self.state.host, context)

    # the steps
    def context(self, bundle: Bundle) -> StepContext:
        live = self.paths.is_host  # under another root (tests, image trees) nothing of the running system is touched
        return StepContext(
            self.paths,
            bundle,
            live=live,
            owners=Owners(self.paths.root, strict=live),
            tuning=self.opts.tuning,
            changed={p for r in self.state.steps.values() for p in r.changed},  # by earlier runs too
            note_changes=self._note_changes,
        )

    def wanted(self, name: str) -> bool:
        return self.state.steps[name].outcome != "ok"  # finished steps are not redone

    def _note_changes(self, paths: list[str]) -> None:
        rec = self.state.steps[self.current]
        rec.changed = sorted(set(rec.changed) | set(paths))
        self.save()

    def begin(self, name: str) -> None:
        self.current = name
        self.state.begin(name)
        self.save()
        self.reporter.event(name, "start")

    def succeeded(self, name: str, outcome: Outcome, duration: float) -> None:
        rec = self.state.finish(name, ok=True, detail=outcome.detail, duration=duration)
        rec.changed = sorted(set(rec.changed) | set(outcome.changed))
        self.save()
        self.reporter.event(name, "ok", outcome.detail, duration)
        LOG.info("%-8s ok in %.2fs: %s", name, duration, outcome.detail)

    def failed(self, name: str, failure: StepFailed, duration: float) -> None:
        self.state.finish(name, ok=False, detail=failure.reason, duration=duration, next_action=failure.next_action)
        self.save()
        self.reporter.event(name, "fail", failure.reason, duration)
        LOG.error("%-8s FAILED after %.2fs: %s", name, duration, failure.reason)
        LOG.error("next: %s", failure.next_action)

    def done(self, ctx: StepContext) -> Outcome:
        ConvergeState.applied(ctx.bundle).save(self.paths.converge_state)  # what `firstboot converge` starts from
        done = json.dumps({"host": self.state.host, "at": time.time()}) + "\n"
        write_atomic(self.paths.done, done.encode(), 0o644, durable=True)
        forget(self.paths)  # the fetched bundle held the secrets; they are on disk where they belong now
        total = sum(r.duration or 0 for r in self.state.steps.values())
        return Outcome(f"{self.state.host} provisioned ({total:.1f}s of steps)")


def run(opts: RunOptions) -> int:
    paths = opts.paths
    if paths.done.exists() and State.load(paths.state).outcome == "done":
        print(f"firstboot: this host is provisioned ({paths.done}); nothing to do")
        return 0
    with lock.held(paths) as mine:  # one run at a time (the unit, an operator's re-run)
        if not mine:
            print("firstboot: another `firstboot run` is in progress (or a converge); see `firstboot status`")
            return 1
        return agent.execute(RunPolicy(opts))
