"""Files written atomically, and only when they differ: the one way kiln (server side and agent) writes a file.

    write_atomic(path, data, mode, owner, durable=...)   temp file in the same directory + rename; always writes
    ensure_file(path, data, mode, owner, durable=...)    compare first; write (or fix mode/owner) only what differs
    create_exclusive(path, data, mode)                    create once, never overwrite (secrets/)

Each write fsyncs the file before the rename; `durable=True` also syncs the directory after it: after a power
cut the file is the old one or the new one, never torn and never missing (the agent's state, events and
secrets). `sync=False` skips both, for outputs a crash may lose whole (./inv render's preview tree).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

TEMP_PREFIX = ".kiln-tmp."  # what an interrupted write leaves behind; remove_stale_temps() clears it


def write_atomic(
    path: Path,
    data: bytes,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    *,
    durable: bool = False,
    sync: bool = True,
) -> None:
    """Replace `path` with `data` in one rename; the new file has `mode` and `owner` (uid, gid) before it appears.

    Raises OSError (the temp file is removed) when the directory cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # nobody else can read it while it is being written
            f.write(data)
            f.flush()
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)
            if sync or durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def differs(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> bool:
    """Whether `path` is anything but a regular file (not a symlink) holding `data` with this mode and owner."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return True
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
        return True
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        return True
    return st.st_size != len(data) or path.read_bytes() != data


def ensure_file(
    path: Path,
    data: bytes,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    *,
    durable: bool = False,
    sync: bool = True,
) -> bool:
    """Make `path` hold `data` with `mode` and `owner`; return whether anything changed.

    Same content with another mode or owner is fixed in place; anything else is written atomically.
    """
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_size == len(data) and path.read_bytes() == data:
            same_owner = owner is None or (st.st_uid, st.st_gid) == owner
            if stat.S_IMODE(st.st_mode) == mode and same_owner:
                return False
            if owner is not None:
                os.chown(path, *owner, follow_symlinks=False)
            os.chmod(path, mode)
            return True
    except FileNotFoundError:
        pass
    write_atomic(path, data, mode, owner, durable=durable, sync=sync)
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove what interrupted writes left in `directory` (not below it); return what was removed."""
    removed = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def create_exclusive(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` with `data` only if it does not exist yet (never overwrites); return whether created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True
