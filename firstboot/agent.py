"""The pipeline: `run` (the boot-time agent, resumable, reporting) and `apply` (offline, into a directory tree)."""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firstboot.backoff import Backoff
from firstboot.errors import RERUN, Refused, StepFailed
from firstboot.log import LOG
from firstboot.owners import Owners
from firstboot.paths import Paths
from firstboot.redact import REDACTOR, redact
from firstboot.report import EventQueue, Reporter
from firstboot.sources import NoSource, Settings, Source, discover
from firstboot.state import State, write_synced
from firstboot.steps.context import Outcome, StepContext, StepFn, Tuning

OFFLINE_SKIPPED = ("firewall", "services", "join", "checks")


def step_functions() -> dict[str, StepFn]:
    from firstboot.join import join
    from firstboot.steps import checks, files, system

    return {
        "network": files.network, "files": files.files_step, "secrets": files.secrets, "firewall": system.firewall,
        "services": system.services, "join": join, "checks": checks.checks,
    }  # fmt: skip


def register_secrets(bundle: dict[str, Any]) -> None:
    for s in bundle.get("secrets", []):
        REDACTOR.add(s.get("value"))


@dataclass(frozen=True)
class RunOptions:
    paths: Paths = field(default_factory=Paths)
    sources: Settings = field(default_factory=Settings)
    tuning: Tuning = field(default_factory=Tuning)
    fetch: Backoff = field(default_factory=Backoff)


class Runner:
    """One `firstboot run`: state on disk after every transition, events queued for the server."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.paths = opts.paths
        self.state = State.load(self.paths.state)
        self.reporter = Reporter(EventQueue(self.paths.events))

    def save(self) -> None:
        self.state.save(self.paths.state)

    def step(self, name: str, fn: Callable[[], Outcome]) -> Outcome:
        self.state.begin(name)
        self.save()
        self.reporter.event(name, "start")
        started = time.monotonic()
        try:
            outcome = fn()
        except StepFailed as e:
            self._failed(name, e.reason, e.next_action, time.monotonic() - started)
            raise
        except Exception as e:  # anything unexpected still leaves a clear state behind
            reason = f"{e.__class__.__name__}: {e}"
            self._failed(name, reason, RERUN, time.monotonic() - started)
            raise StepFailed(redact(reason)) from None
        duration = time.monotonic() - started
        rec = self.state.finish(name, ok=True, detail=outcome.detail, duration=duration)
        rec.changed = sorted(set(rec.changed) | set(outcome.changed))
        self.save()
        self.reporter.event(name, "ok", outcome.detail, duration)
        LOG.info("%-8s ok in %.2fs: %s", name, duration, outcome.detail)
        return outcome

    def _failed(self, name: str, reason: str, next_action: str, duration: float) -> None:
        self.state.finish(name, ok=False, detail=reason, duration=duration, next_action=next_action)
        self.save()
        self.reporter.event(name, "fail", reason, duration)
        LOG.error("%-8s FAILED after %.2fs: %s", name, duration, reason)
        LOG.error("next: %s", next_action)

    def note_changes(self, name: str) -> Callable[[list[str]], None]:
        def note(paths: list[str]) -> None:
            rec = self.state.steps[name]
            rec.changed = sorted(set(rec.changed) | set(paths))
            self.save()

        return note

    # the fetch step
    def source(self) -> Source:
        try:
            return discover(self.paths, self.opts.sources)
        except NoSource as e:
            raise StepFailed(
                str(e), "boot with kiln.url= on the kernel command line, or bake /etc/kiln/agent.json into the image"
            ) from None

    def load_bundle(self, macs: list[str], url: str) -> dict[str, Any]:
        from firstboot.fetch import fetch_bundle
        from firstboot.verify import verify_bundle

        try:
            key = self.paths.signing_pub.read_bytes()
        except FileNotFoundError:
            raise Refused(
                f"no signing key at {self.paths.signing_pub}", "the image lacks the baked key; rebuild it"
            ) from None
        if self.paths.bundle_body.exists() and self.paths.bundle_signature.exists():
            body, signature = self.paths.bundle_body.read_bytes(), self.paths.bundle_signature.read_text().strip()
            try:
                bundle = verify_bundle(body, signature, key, macs)  # the cache is verified like a fresh fetch
            except Refused as e:
                LOG.warning("discarding the cached bundle: %s", e.reason)
                self.paths.bundle_body.unlink(missing_ok=True)
                self.paths.bundle_signature.unlink(missing_ok=True)
            else:
                register_secrets(bundle)
                return bundle
        if not url:
            raise StepFailed("no cached bundle and no provisioning URL known yet")
        fetched = fetch_bundle(url, macs, self.paths.ca_pem, self.opts.fetch)
        bundle = verify_bundle(fetched.body, fetched.signature, key, macs)
        register_secrets(bundle)
        write_synced(self.paths.bundle_body, fetched.body)
        write_synced(self.paths.bundle_signature, (fetched.signature or "").encode())
        return bundle

    def run(self) -> int:
        for name in self.state.interrupted():
            LOG.warning("step %s was interrupted (crash or power cut); redoing it", name)
        self.reporter.start()
        try:
            holder: dict[str, Any] = {}
            if self.state.steps["fetch"].outcome == "ok":
                try:
                    holder["bundle"] = self.load_bundle(self._macs(self.state.mac), self.state.url)
                    self._target()
                except StepFailed as e:
                    LOG.warning("the fetched bundle is no longer usable (%s); fetching it again", e.reason)
            if "bundle" not in holder:
                self.step("fetch", lambda: self._fetch(holder))
            bundle = holder["bundle"]
            # under another root (tests, image trees) nothing of the running system is touched
            live = self.paths.is_host
            ctx = StepContext(
                self.paths, bundle, live=live, owners=Owners(self.paths.root, strict=live), tuning=self.opts.tuning
            )
            for name, fn in step_functions().items():
                ctx.changed |= {p for r in self.state.steps.values() for p in r.changed}
                if self.state.steps[name].outcome != "ok":
                    ctx.note_changes = self.note_changes(name)
                    self.step(name, lambda fn=fn: fn(ctx))
            self.step("done", self.finish)
            return 0
        except StepFailed:
            return 1
        finally:
            left = self.reporter.close()
            if left:
                LOG.info("%d events stay queued in %s for the server", left, self.paths.events)

    def _macs(self, first: str) -> list[str]:
        from firstboot.identity import macs
        from firstboot.sources.cmdline import bootif

        return macs(self.paths, first or bootif(self.paths))

    def _target(self) -> None:
        from firstboot.transport import tls_context

        try:
            context = tls_context(self.paths.ca_pem)
        except Exception:  # the fetch reports a missing CA; events then stay queued
            return
        if self.state.host:
            self.reporter.target(self.state.url, self.state.host, context)

    def _fetch(self, holder: dict[str, Any]) -> Outcome:
        src = self.source()
        self.state.url, self.state.source, self.state.host = src.url, src.origin, src.host
        self._target()
        bundle = self.load_bundle(self._macs(src.mac), src.url)
        h = bundle["host"]
        self.state.host, self.state.mac = h["name"], h["mac"]
        self._target()
        holder["bundle"] = bundle
        return Outcome(f"bundle for {h['name']} ({h['role']}, {h['mac']}) from {src.url} ({src.origin}) verified")

    def finish(self) -> Outcome:
        write_synced(self.paths.done, (json.dumps({"host": self.state.host, "at": time.time()}) + "\n").encode(), 0o644)
        # the fetched bundle held the secrets; they are on disk where they belong now
        self.paths.bundle_body.unlink(missing_ok=True)
        self.paths.bundle_signature.unlink(missing_ok=True)
        total = sum(r.duration or 0 for r in self.state.steps.values())
        return Outcome(f"{self.state.host} provisioned ({total:.1f}s of steps)")


def run(opts: RunOptions) -> int:
    paths = opts.paths
    if paths.done.exists() and State.load(paths.state).outcome == "done":
        print(f"firstboot: this host is provisioned ({paths.done}); nothing to do")
        return 0
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.state_dir / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # one run at a time (the unit, an operator's re-run)
        except BlockingIOError:
            print("firstboot: another `firstboot run` is in progress; see `firstboot status`")
            return 1
        return Runner(opts).run()


def apply(
    bundle_file: Path, root: Path, *, live: bool, only: tuple[str, ...] = (), tuning: Tuning | None = None
) -> int:
    """Apply a bundle (as rendered, or as served) to the tree at `root`; print one line per step."""
    from kiln.bundle import BUNDLE_SCHEMA

    bundle = json.loads(bundle_file.read_text())
    register_secrets(bundle)
    if bundle.get("schema") != BUNDLE_SCHEMA:
        print(
            f"firstboot: {bundle_file}: schema {bundle.get('schema')!r}, this agent knows schema {BUNDLE_SCHEMA}; "
            "nothing applied"
        )
        return 1
    paths = Paths(root)
    # The live steps act on the machine (and network namespace) the agent runs in. Into a tree other than /
    # they run only when named with --only: a stray apply must not load a default-drop firewall here.
    named = live and not paths.is_host
    ctx = StepContext(paths, bundle, live=live, owners=Owners(root, strict=False), tuning=tuning or Tuning())
    total_changed = 0
    for name, fn in step_functions().items():
        if only and name not in only:
            continue
        if not live and name in OFFLINE_SKIPPED:
            print(f"{name:<9} skipped (--no-services)")
            continue
        if named and name in OFFLINE_SKIPPED and name not in only:
            print(f"{name:<9} skipped (the root is not /: name it with --only {name} to run it on this machine)")
            continue
        started = time.monotonic()
        try:
            outcome = fn(ctx)
        except StepFailed as e:
            print(redact(f"{name:<9} FAILED: {e.reason}\n          next: {e.next_action}"))
            return 1
        except (OSError, ValueError, KeyError) as e:
            print(redact(f"{name:<9} FAILED: {e.__class__.__name__}: {e}"))
            return 1
        ctx.changed |= set(outcome.changed)
        total_changed += len(outcome.changed)
        print(redact(f"{name:<9} {outcome.detail} ({time.monotonic() - started:.2f}s)"))
    print(
        f"applied {bundle['host']['name']} to {root}: " + (f"{total_changed} changes" if total_changed else "unchanged")
    )
    return 0
