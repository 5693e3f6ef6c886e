"""Directories, files and secrets onto disk: observe, compare, then act or do nothing.

Files are written to a temp file in the same directory with their mode and owner set, synced,
then renamed over the old one, and only when content, mode or owner differ.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kiln.fsutil import write_atomic


def _matches(st: os.stat_result, mode: int, uid: int, gid: int) -> bool:
    return stat.S_IMODE(st.st_mode) == mode and st.st_uid == uid and st.st_gid == gid


def ensure_dir(path: Path, mode: int, uid: int, gid: int) -> bool:
    """Create or fix a directory; return whether anything changed."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=mode)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{path} exists and is not a directory")
    if _matches(st, mode, uid, gid):
        return False
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return True


def ensure_file(path: Path, data: bytes, mode: int, uid: int, gid: int) -> bool:
    """Write `data` atomically unless the file already holds it with this mode and owner; return whether it changed."""
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and path.read_bytes() == data:
            if _matches(st, mode, uid, gid):
                return False
            os.chown(path, uid, gid)
            os.chmod(path, mode)
            return True
    except FileNotFoundError:
        pass
    return write_atomic(path, data, mode, owner=(uid, gid))
