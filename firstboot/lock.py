"""One agent at work on a host at a time: `firstboot run` and each converge hold /var/lib/firstboot/lock (flock).

The lock goes with the process: a crashed or killed holder releases it, nothing to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator

from firstboot.paths import Paths

LOCK_POLL = 0.2  # seconds between two tries while waiting


@contextlib.contextmanager
def held(paths: Paths, *, wait: float = 0.0) -> Iterator[bool]:
    """Hold the state directory's lock for the block; yields False (and holds nothing) when another process still
    held it after `wait` seconds."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "w") as lock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(LOCK_POLL)
        yield True  # released when the file closes
