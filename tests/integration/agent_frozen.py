"""Run the frozen agent as on a target without Python: every Python on this machine hidden in a mount namespace."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

PYTHON_DIRS = ("/root/.pyenv", "/usr/lib/python3", "/usr/lib/python3.11", "/usr/local/lib/python3.11")


def without_python(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    dirs = [d for d in PYTHON_DIRS if os.path.isdir(d)]
    files = [f for f in glob.glob("/usr/bin/python3*") + glob.glob("/usr/local/bin/python3*") if os.path.isfile(f)]
    script = "".join(f"mount -t tmpfs none {d} || exit 125; " for d in dirs)
    script += "".join(f"mount --bind /dev/null {f} || exit 125; " for f in files)
    script += 'exec "$@"'
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )


def frozen_binary() -> Path:
    from kiln.freeze import OUT, freeze

    assert freeze(OUT) == 0
    return OUT / "firstboot"
