"""Owner and group names to numeric ids, from the target tree's /etc/passwd and /etc/group (the host's for /).

A name the tree does not know: `apply` into a tree (where the package that creates the user may not be installed
yet) falls back to 0 (root) and says so; `run` on the host refuses, since a secret owned by the wrong group breaks
its service quietly. Names only: the bundle contract admits no numeric owner.
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from firstboot.errors import StepFailed
from firstboot.log import LOG
from kiln.bundle import Directory, File, Secret


def _read_db(path: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[2].isdigit():
                ids.setdefault(fields[0], int(fields[2]))
    except FileNotFoundError:
        pass
    return ids


@dataclass
class Owners:
    root: Path
    strict: bool
    fallbacks: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._host = self.root.resolve() == Path("/")
        self._users = {} if self._host else _read_db(self.root / "etc/passwd")
        self._groups = {} if self._host else _read_db(self.root / "etc/group")

    def _lookup(self, name: str, kind: str) -> int | None:
        if name == "root":
            return 0
        if self._host:
            try:
                return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
            except KeyError:
                return None
        return (self._users if kind == "user" else self._groups).get(name)

    def resolve(self, name: str, kind: str, path: str) -> int:
        found = self._lookup(name, kind)
        if found is not None:
            return found
        if self.strict:
            raise StepFailed(
                f"{path}: {kind} {name!r} does not exist on this host",
                f"the image for this role should create {kind} {name!r}; "
                "rebuild it, or create it and run `firstboot run`",
            )
        if name not in self.fallbacks:
            self.fallbacks.add(name)
            LOG.warning(
                "%s %r is not in %s/etc/%s; using 0 (root) instead",
                kind,
                name,
                self.root,
                "passwd" if kind == "user" else "group",
            )
        return 0

    def account(self, name: str) -> tuple[int, int] | None:
        """(uid, gid) of the user `name` and its group of the same name; None when either is missing."""
        uid, gid = self._lookup(name, "user"), self._lookup(name, "group")
        return None if uid is None or gid is None else (uid, gid)

    def ids(self, entry: Directory | File | Secret) -> tuple[int, int]:
        """The (uid, gid) a bundle entry is to be owned by."""
        return self.resolve(entry.owner, "user", entry.path), self.resolve(entry.group, "group", entry.path)
