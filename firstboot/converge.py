"""`firstboot converge`: after the first boot the host keeps following its bundle (kiln-converge.service).

Each turn asks the server for a generation newer than the one this host runs (firstboot.poll) and, when there
is one, verifies it exactly as the first boot's fetch does (signature over the exact body, contract, host
binding, cluster, expiry, generation; shared contents against their digests) and applies it with the same step
functions, in converge's order and with converge's rules:

    network, files, secrets   write what differs (files only: no hostname, networkd or sysctl yet); each file
                              is kept in memory as it was just before it is written (firstboot.snapshot)
    check                     when anything changed, every config's own checker; a refusal puts every changed
                              file back exactly as it was and nothing live has been touched: the previous
                              generation keeps running
    sysctl                    the changed sysctl.d files are loaded
    firewall                  nft -f of the whole ruleset (one transaction), only when it changed
    services                  daemon-reload when unit files changed; reload-or-restart only the units whose
                              restart_on files changed
    join                      only when the bundle's join differs from the last applied one, in converge mode
                              (a replica re-points, it is never reset or reseeded)
    checks                    the health checks, only when something changed

First-boot-only work (enrolment, secrets handed out, a replica's seed, the hostname) never runs again. What the
host runs is recorded in /var/lib/firstboot/converge.json (firstboot.state.ConvergeState) once a generation
is applied whole; each attempt is reported as "converge" start/ok/fail events carrying its generation. Under a
root other than / the live steps are skipped as `firstboot run` skips them, and the checkers run against the
tree (firstboot.steps.check).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from firstboot import agent, lock
from firstboot.backoff import Backoff
from firstboot.credential import Credential
from firstboot.errors import Refused, StepFailed
from firstboot.log import LOG
from firstboot.owners import Owners
from firstboot.paths import Paths
from firstboot.poll import MAX_WAIT, Newer, PollFailed, Revoked, Unchanged, poll, wait_after
from firstboot.redact import REDACTOR, redact
from firstboot.report import EventQueue, Reporter
from firstboot.snapshot import Snapshot
from firstboot.state import DONE, FETCH, ConvergeState, State
from firstboot.steps import check, checks, files, system
from firstboot.steps.context import Outcome, StepContext, StepFn, Tuning
from firstboot.steps.fetch import (
    REPLAY_HINT,
    Expect,
    Fetched,
    baked_cluster_id,
    download_shared,
    forget,
    verify_served,
    with_shared,
)
from firstboot.steps.join import join
from firstboot.transport import tls_context
from kiln.bundle import Bundle
from kiln.fsutil import write_atomic

EVENT_STEP = "converge"  # the one step name of converge's events; each carries the generation it is about
DEFAULT_INTERVAL = 10.0  # seconds until the next poll when the server names none
LOCK_WAIT = 60.0  # seconds --once waits for a `firstboot run` (or another converge) to finish
SHARED_BACKOFF = Backoff(initial=0.5, cap=10.0, deadline=60.0)  # for a generation's shared contents


def _files_only(fn: StepFn) -> StepFn:
    """`fn` without its live part: the hostname, networkd and sysctl wait until the checkers passed."""

    def written(ctx: StepContext) -> Outcome:
        return fn(replace(ctx, live=False))

    return written


STEPS: dict[str, StepFn] = {
    "network": _files_only(files.network),
    "files": _files_only(files.files),
    "secrets": files.secrets,  # withheld after the first boot: each must be on disk already
    "check": check.check,
    "sysctl": files.sysctl,
    "firewall": system.firewall,
    "services": system.services,
    "join": join,
    "checks": checks.checks,
}
# a failure up to here leaves nothing live touched: the files changed so far go back
BEFORE_LIVE = (FETCH, "network", "files", "secrets", "check")
# how a step's outcome begins when it did nothing (not worth the applied event's detail)
NOTHING_DONE = ("unchanged", "skipped", "nothing changed", "no file")


class Stopped(StepFailed):
    """SIGTERM arrived: converge stops between two steps."""


class Record:
    """What each attempt leaves: converge.json (for the next turn and `firstboot status`) and its events."""

    def __init__(self, paths: Paths, reporter: Reporter, *, generation: int = 0) -> None:
        self.paths = paths
        self.reporter = reporter
        self.fallback = generation  # a host provisioned before converge.json existed: its state.json generation
        self.state = self.load()

    def load(self) -> ConvergeState:
        """converge.json as it is now (another converge may have moved it on since)."""
        self.state = ConvergeState.load(self.paths.converge_state)
        # never below what the first boot accepted (a host from before converge.json, or a file that is unreadable)
        self.state.generation = max(self.state.generation, self.fallback)
        return self.state

    def pending(self, host_paths: list[str]) -> None:
        self.state.pending = sorted(set(self.state.pending) | set(host_paths))
        self.state.save(self.paths.converge_state)

    def started(self, generation: int) -> None:
        LOG.info("converge: applying generation %d (this host runs %d)", generation, self.state.generation)
        self.reporter.event(EVENT_STEP, "start", f"applying generation {generation}", generation=generation)

    def failed(self, reason: str, generation: int | None, *, put_back: Sequence[str] = ()) -> None:
        # the paths put back are the running generation's again; any other pending one (written by an attempt
        # that crashed) still differs from what the services loaded
        self.state.pending = sorted(set(self.state.pending) - set(put_back))
        about = f"generation {generation}: " if generation is not None else ""
        self.state.last_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {about}{reason}"
        self.state.save(self.paths.converge_state)
        self.reporter.event(EVENT_STEP, "fail", reason, generation=generation)
        LOG.error("converge: %s%s", about, reason)

    def applied(self, bundle: Bundle, detail: str, duration: float) -> None:
        self.state = ConvergeState.applied(bundle)
        self.state.save(self.paths.converge_state)
        self.reporter.event(EVENT_STEP, "ok", detail, duration, generation=bundle.generation)


class ConvergePolicy:
    """One newer generation onto a running host: agent.execute(policy, STEPS). `source` fills the fetch slot (the
    server's verified bundle with its shared contents, or a file); the bundle must be newer than what runs."""

    def __init__(
        self,
        paths: Paths,
        source: Callable[[], Fetched],
        record: Record,
        *,
        tuning: Tuning | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.paths = paths
        self.source = source
        self.record = record
        self.tuning = tuning or Tuning()
        self.stopping = stopping or threading.Event()
        self.snapshot = Snapshot(paths)
        self.bundle: Bundle | None = None
        self.ctx: StepContext | None = None
        self.started = time.monotonic()
        self.changed: list[str] = []
        self.actions: list[str] = []

    def start(self) -> None:
        self.started = time.monotonic()

    def stop(self) -> None:
        pass

    def resume(self) -> Bundle | None:
        return None

    def fetch(self) -> Fetched:
        fetched = self.source()
        runs = self.record.state.generation
        if fetched.bundle.generation <= runs:
            raise Refused(
                f"bundle refused: generation {fetched.bundle.generation} is not newer than generation {runs}, "
                "which this host runs",
                REPLAY_HINT,
            )
        return fetched

    def context(self, bundle: Bundle) -> StepContext:
        self.bundle = bundle
        for secret in bundle.secrets:  # withheld: their values are on disk; a checker's output must not show one
            try:
                REDACTOR.add(self.paths.under(secret.path).read_text())
            except (OSError, ValueError):
                pass
        live = self.paths.is_host
        self.ctx = StepContext(
            self.paths,
            bundle,
            live=live,
            owners=Owners(self.paths.root, strict=live),
            tuning=self.tuning,
            changed=set(self.record.state.pending),  # written by an attempt that did not finish
            note_changes=self._note_changes,
            converging=True,
        )
        return self.ctx

    def _note_changes(self, host_paths: list[str]) -> None:
        self.snapshot.take(host_paths)  # before the write: what to put back
        self.record.pending(host_paths)

    def wanted(self, name: str) -> bool:
        assert self.bundle is not None and self.ctx is not None
        if name == "join" and self.record.state.same_join(self.bundle):
            LOG.info("converge %-8s not rerun: the join is the one applied last", name)
            return False
        if name == "checks" and not self.ctx.changed:
            LOG.info("converge %-8s not run: nothing changed", name)
            return False
        return True

    def begin(self, name: str) -> None:
        if name != DONE and self.stopping.is_set():
            failure = Stopped(
                f"stopped (SIGTERM) before step {name}", "nothing to do: the next start of converge tries again"
            )
            self.failed(name, failure, 0.0)
            raise failure

    def succeeded(self, name: str, outcome: Outcome, duration: float) -> None:
        if isinstance(outcome, Fetched):
            self.record.started(outcome.bundle.generation)
        if name in ("network", "files", "secrets"):
            self.changed += outcome.changed
        elif name not in (FETCH, DONE) and not outcome.detail.startswith(NOTHING_DONE):
            self.actions.append(f"{name}: {outcome.detail}")
        LOG.info("converge %-8s ok in %.2fs: %s", name, duration, redact(outcome.detail))

    def failed(self, name: str, failure: StepFailed, duration: float) -> None:
        generation = self.bundle.generation if self.bundle is not None else None
        reason = f"{name}: {failure.reason}"
        kept, restored = len(self.snapshot), []
        if name in BEFORE_LIVE and kept:
            restored = self.snapshot.restore()
            reason += f"\n{len(restored)} of {kept} changed files put back; no service was touched"
        elif name in BEFORE_LIVE:
            reason += "\nnothing was changed; no service was touched"
        self.record.failed(reason, generation, put_back=restored)
        LOG.error("converge next: %s", failure.next_action)

    def done(self, ctx: StepContext) -> Outcome:
        bundle = ctx.bundle
        what = f"{len(self.changed)} files changed ({', '.join(self.changed)})" if self.changed else "no file changed"
        detail = "; ".join([f"generation {bundle.generation} applied: {what}", *self.actions])
        self.record.applied(bundle, detail, time.monotonic() - self.started)
        forget(self.paths)  # this generation's shared contents: the next one fetches its own
        return Outcome(detail)


@dataclass(frozen=True)
class ConvergeOptions:
    paths: Paths = field(default_factory=Paths)
    tuning: Tuning = field(default_factory=Tuning)
    interval: float = DEFAULT_INTERVAL
    once: bool = False


@dataclass(frozen=True)
class Turn:
    """What one turn did: its exit code (for --once), how long until the next, whether converge ends for good."""

    code: int
    wait: float
    retired: bool = False


class Converger:
    """The turns of one `firstboot converge`: poll, and apply what is newer, one turn at a time."""

    def __init__(self, opts: ConvergeOptions, stopping: threading.Event, rng: random.Random | None = None) -> None:
        self.opts = opts
        self.paths = opts.paths
        self.stopping = stopping
        self.rng = rng or random.Random()
        self.host = State.load(self.paths.state)  # who the first boot made this host: server, name, key, cluster
        self.credential = Credential(self.paths, host=self.host.host, enrolled=self.host.enrolled)
        self.reporter = Reporter(EventQueue(self.paths.events), self.credential)
        self.record = Record(self.paths, self.reporter, generation=self.host.generation)
        self.failures = 0  # turns in a row that failed: each waits twice as long as the one before

    def __enter__(self) -> Converger:
        try:
            self.reporter.target(self.host.url, self.host.host, tls_context(self.paths.ca_pem))
        except OSError as e:
            LOG.warning("converge: cannot load %s (%s); events stay queued", self.paths.ca_pem, e)
        self.reporter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        left = self.reporter.close()
        if left:
            LOG.info("%d events stay queued in %s for the server", left, self.paths.events)

    def forever(self) -> int:
        """Turns until SIGTERM (exit 0) or the host is retired (exit 0); the first after a random part of the
        interval, so that hosts started together do not ask together."""
        wait = self.rng.uniform(0, self.opts.interval)
        while not self.stopping.wait(wait):
            with lock.held(self.paths) as mine:
                if not mine:
                    LOG.info("converge: a `firstboot run` or another converge is at work; asking later")
                    wait = wait_after(None, self.opts.interval, self.rng)
                    continue
                turn = self.turn()
            if turn.retired:
                return 0
            wait = turn.wait
        LOG.info("converge: stopped")
        return 0

    def once(self) -> int:
        with lock.held(self.paths, wait=LOCK_WAIT) as mine:
            if not mine:
                print(f"firstboot: a `firstboot run` or another converge held the lock for {LOCK_WAIT:.0f}s; try later")
                return 1
            return self.turn().code

    def turn(self) -> Turn:
        """One poll, and (when newer) one apply."""
        runs = self.record.load().generation
        try:
            polled = poll(self.host.url, runs, self.paths.ca_pem, self.credential)
        except (PollFailed, StepFailed) as e:
            reason = e.reason if isinstance(e, StepFailed) else str(e)
            return self._failed_turn(f"no answer from the server: {reason}")
        match polled:
            case Revoked(reason=reason):
                return self._retire(reason)
            case Unchanged(retry_after=retry_after):
                self.failures = 0
                LOG.debug("converge: nothing newer than generation %d (Retry-After %s)", runs, retry_after)
                return Turn(0, wait_after(retry_after, self.opts.interval, self.rng))
            case Newer(signed=signed):
                expect = Expect(
                    cluster_id=baked_cluster_id(self.paths) or self.host.cluster_id,
                    generation=runs,
                    now=self.credential.now,
                )
                try:
                    bundle = verify_served(self.paths, signed, expect, self.host.mac)
                except StepFailed as e:
                    self.record.failed(f"fetch: {e.reason}", None)
                    return self._failed_turn(e.reason)
                if bundle.generation == runs:  # a server that does not know ?after= answers what this host runs
                    return Turn(0, wait_after(None, self.opts.interval, self.rng))
                return self._apply(bundle)
        raise AssertionError(polled)

    def _apply(self, bundle: Bundle) -> Turn:
        policy = ConvergePolicy(
            self.paths,
            partial(self._with_shared, bundle),
            self.record,
            tuning=self.opts.tuning,
            stopping=self.stopping,
        )
        if agent.execute(policy, STEPS) != 0:
            return self._failed_turn(f"generation {bundle.generation} not applied")
        self.failures = 0
        return Turn(0, wait_after(None, self.opts.interval, self.rng))

    def _with_shared(self, bundle: Bundle) -> Fetched:
        digests = bundle.shared_digests()
        contents = download_shared(
            self.paths, self.host.url, digests, self.paths.ca_pem, SHARED_BACKOFF, self.credential
        )
        h = bundle.host
        detail = f"generation {bundle.generation} for {h.name} from {self.host.url} verified"
        return Fetched(
            detail + (f", {len(digests)} shared contents" if digests else ""), bundle=with_shared(bundle, contents)
        )

    def _failed_turn(self, why: str) -> Turn:
        self.failures += 1
        wait = wait_after(None, min(MAX_WAIT, self.opts.interval * 2 ** min(self.failures, 10)), self.rng)
        LOG.warning("converge: %s%s", why, "" if self.opts.once else f"; asking again in {wait:.0f}s")
        return Turn(1, wait)

    def _retire(self, reason: str) -> Turn:
        marker = json.dumps({"at": time.time(), "reason": reason}) + "\n"
        write_atomic(self.paths.retired, marker.encode(), 0o644, durable=True)
        LOG.error(
            "converge: the server refused this host's key (HTTP 403: %s): the host is retired. Converge stops for "
            "good (%s written; kiln-converge.service is skipped from now on); the host keeps running what it has",
            reason,
            self.paths.retired,
        )
        return Turn(0, 0.0, retired=True)


def refusal(paths: Paths) -> tuple[str, int] | None:
    """Why converge does not start here (the message and the exit code), or None."""
    if paths.retired.exists():
        return f"firstboot: this host is retired ({paths.retired}): the server revoked its key; nothing to do", 0
    if not paths.done.exists():
        return (
            f"firstboot: this host is not provisioned yet (no {paths.done}); `firstboot run` comes first "
            "(see `firstboot status`)",
            1,
        )
    return None


def converge(opts: ConvergeOptions, stopping: threading.Event | None = None) -> int:
    """`firstboot converge`: --once exits 0 (nothing newer, or applied) or 1 (failed); otherwise turns until
    SIGTERM (`stopping`)."""
    refused = refusal(opts.paths)
    if refused is not None:
        print(refused[0])
        return refused[1]
    with Converger(opts, stopping or threading.Event()) as converger:
        return converger.once() if opts.once else converger.forever()
