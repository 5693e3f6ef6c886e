"""The files a converge is about to change, as they were: kept in memory, put back when the new generation fails
before anything live acted on it (a checker refused it, a secret is missing).

Taken path by path just before each write (the steps announce what they will change through
StepContext.note_changes), so only what really changes is held. Memory, not disk: nothing of an old
config (which may sit beside secrets) is left in another file, and a crash loses nothing that matters, since
the generation is not recorded as applied until it finished (the next attempt starts again from what is there).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from firstboot.log import LOG
from firstboot.paths import Paths
from kiln.fsutil import write_atomic


@dataclass(frozen=True)
class Previous:
    """A path as it was: a regular file (content, mode, owner), a symlink (its target) or nothing."""

    target: Path
    data: bytes | None = None  # None: there was no regular file
    mode: int = 0o644
    owner: tuple[int, int] = (0, 0)
    link: str | None = None

    @classmethod
    def read(cls, target: Path) -> Previous:
        try:
            st = target.lstat()
        except FileNotFoundError:
            return cls(target)
        if stat.S_ISLNK(st.st_mode):
            return cls(target, link=os.readlink(target))
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{target} is not a regular file")
        return cls(target, target.read_bytes(), stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid))

    def restore(self) -> None:
        if self.data is not None:
            write_atomic(self.target, self.data, self.mode, self.owner, durable=True)
        elif self.link is not None:
            temp = self.target.with_name(f".kiln-link.{self.target.name}")
            temp.unlink(missing_ok=True)
            os.symlink(self.link, temp)
            os.replace(temp, self.target)
        else:
            self.target.unlink(missing_ok=True)


class Snapshot:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._previous: dict[str, Previous] = {}  # host path -> as it was before the first write this converge

    def take(self, host_paths: list[str]) -> None:
        """Keep each path as it is now, unless it was kept already (the first state is the one to go back to)."""
        for path in host_paths:
            if path not in self._previous:
                self._previous[path] = Previous.read(self.paths.under(path))

    def __len__(self) -> int:
        return len(self._previous)

    def restore(self) -> list[str]:
        """Put every kept path back as it was, last written first; return the host paths put back."""
        restored = []
        for path, previous in reversed(self._previous.items()):
            try:
                previous.restore()
            except OSError as e:  # the others still go back; this one is named where the failure is reported
                LOG.error("cannot put %s back: %s", path, e)
                continue
            restored.append(path)
        self._previous.clear()
        return restored
