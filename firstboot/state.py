"""/var/lib/firstboot/state.json: per step started, finished, outcome, duration; written atomically and synced.

A step found "running" was interrupted (crash, power cut) and is redone; "ok" steps are skipped.
Every text stored here passes the redactor first.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from firstboot.redact import redact
from kiln.bundle import Bundle, dumps
from kiln.fsutil import write_atomic
from kiln.typedjson import encode

FETCH, DONE = "fetch", "done"  # the first step (the bundle) and the last (the host is provisioned)
STEPS = (FETCH, "network", "files", "secrets", "firewall", "services", "join", "checks", DONE)
STATE_VERSION = 1


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class StepRecord:
    started: str | None = None
    finished: str | None = None
    outcome: str = "pending"  # pending | running | ok | fail
    duration: float | None = None
    detail: str = ""
    attempts: int = 0
    next_action: str = ""
    changed: list[str] = field(default_factory=list)  # paths this step changed (the services step restarts on them)


@dataclass
class State:
    host: str = ""
    url: str = ""
    source: str = ""
    mac: str = ""
    outcome: str = "new"  # new | running | failed | done
    steps: dict[str, StepRecord] = field(default_factory=lambda: {s: StepRecord() for s in STEPS})
    updated: str = ""
    enrolled: bool = False  # the server bound this host's key: its requests are signed with it
    cluster_id: str = ""  # the cluster whose bundles this host accepts (the first one's, unless baked)
    generation: int = 0  # the newest generation accepted: an older one is refused

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError):
            # a state file we cannot read is treated as a fresh start: every step is idempotent
            return cls()
        steps = {s: StepRecord(**raw.get("steps", {}).get(s, {})) for s in STEPS}
        keys = ("host", "url", "source", "mac", "outcome", "updated", "enrolled", "cluster_id", "generation")
        scalars = {k: raw[k] for k in keys if k in raw}
        return cls(**scalars, steps=steps)

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"version": STATE_VERSION, **asdict(self)}
        return json.dumps(data, indent=2).encode() + b"\n"

    def save(self, path: Path) -> None:
        self.updated = now_iso()
        write_atomic(path, self.to_json(), 0o600, durable=True)

    # transitions
    def begin(self, step: str) -> StepRecord:
        rec = self.steps[step]
        rec.started, rec.finished, rec.outcome, rec.duration = now_iso(), None, "running", None
        rec.detail, rec.next_action = "", ""
        rec.attempts += 1
        self.outcome = "running"
        return rec

    def finish(self, step: str, *, ok: bool, detail: str, duration: float, next_action: str = "") -> StepRecord:
        rec = self.steps[step]
        rec.finished, rec.outcome, rec.duration = now_iso(), "ok" if ok else "fail", round(duration, 3)
        rec.detail, rec.next_action = redact(detail), redact(next_action)
        if not ok:
            self.outcome = "failed"
        elif step == DONE:
            self.outcome = "done"
        return rec

    def interrupted(self) -> list[str]:
        return [s for s, r in self.steps.items() if r.outcome == "running"]

    def failed_step(self) -> str | None:
        return next((s for s, r in self.steps.items() if r.outcome == "fail"), None)


@dataclass
class ConvergeState:
    """/var/lib/firstboot/converge.json: what converge starts from and what `firstboot status` shows.

    `generation` is the generation this host runs (the first boot's, then each one converge applied) and `join`
    its join as JSON (a join reruns only when the new one differs). `pending` holds the paths a converge changed
    for a generation it has not finished: after a crash the next attempt still checks and reloads for them.
    """

    generation: int = 0
    join: Any = None
    applied_at: float | None = None
    last_error: str | None = None  # the last converge that failed, and why; None once one succeeds
    pending: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ConvergeState:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(raw, dict):
            return cls()
        return cls(
            generation=int(raw.get("generation") or 0),
            join=raw.get("join"),
            applied_at=raw.get("applied_at"),
            last_error=raw.get("last_error"),
            pending=[str(p) for p in raw.get("pending") or []],
        )

    @classmethod
    def applied(cls, bundle: Bundle) -> ConvergeState:
        """The state of a host that now runs `bundle` (its generation and its join)."""
        return cls(generation=bundle.generation, join=encode(bundle.join), applied_at=time.time())

    def same_join(self, bundle: Bundle) -> bool:
        """Whether `bundle`'s join is the one applied last (compared as canonical JSON)."""
        return self.join is not None and dumps(self.join) == dumps(encode(bundle.join))

    def save(self, path: Path) -> None:
        self.last_error = redact(self.last_error) if self.last_error else self.last_error
        write_atomic(path, json.dumps(asdict(self), indent=2).encode() + b"\n", 0o600, durable=True)
