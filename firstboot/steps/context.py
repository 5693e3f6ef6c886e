"""What every step gets: where to write, the bundle, whether to touch the running system, how to note changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from firstboot.errors import StepFailed
from firstboot.owners import Owners
from firstboot.paths import Paths
from firstboot.redact import REDACTOR
from kiln.bundle import Bundle

# seconds for each health check to pass: a check on a starved VM (seven emulated hosts on two cores) went
# unanswered for 120 s while the daemon was fine; a real fault is reported after this long
CHECK_DEADLINE = 300.0


@dataclass(frozen=True)
class Tuning:
    """Timeouts and local endpoints; defaults fit a real host, tests shorten or redirect them."""

    check_deadline: float = CHECK_DEADLINE
    join_deadline: float = 300.0  # seconds for lb/service joins to see their peers
    db_socket: str = "/run/mysqld/mysqld.sock"


def _ignore(paths: list[str]) -> None:
    pass


@dataclass
class StepContext:
    paths: Paths
    bundle: Bundle
    live: bool  # touch the running system: hostname, nft, systemd, joins, checks
    owners: Owners
    tuning: Tuning = field(default_factory=Tuning)
    changed: set[str] = field(default_factory=set)  # host paths changed by earlier steps (this run or recorded)
    note_changes: Callable[[list[str]], None] = _ignore  # persists paths before they are written
    converging: bool = False  # a running host following a newer generation: nothing destructive reruns

    def secret(self, name: str) -> str:
        """A secret's value as written to disk by the secrets step (passwords without the trailing newline)."""
        entry = self.bundle.secret(name)
        if entry is None:
            raise StepFailed(f"the bundle has no secret {name!r}")
        try:
            value = self.paths.under(entry.path).read_text().strip()
        except FileNotFoundError:
            raise StepFailed(f"secret {name!r} is not on disk at {entry.path}") from None
        REDACTOR.add(value)
        return value


@dataclass(frozen=True)
class Outcome:
    detail: str
    changed: tuple[str, ...] = ()  # host paths this step changed (the services step restarts on them)


StepFn = Callable[[StepContext], Outcome]
