"""A rendered host laid out as a root tree, and commands run as if that tree were applied to this machine.

The checkers read their configs at the real paths (/etc/haproxy/haproxy.cfg, ...): each command runs in a
private mount namespace where the host's tree is overlaid on this machine's /etc and /var; what the
command writes lands in a scratch directory beside the tree. Nothing outside the namespace changes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from kiln.secrets import SecretStore

OVERLAID = ("etc", "var/lib", "var/cache")

# Mounts an overlay for each "tree upper work target" quadruple, then execs the command after "--".
_OVERLAY_SH = (
    'while [ "$1" != "--" ]; do '
    'mount -t overlay overlay -o "lowerdir=$1:$4,upperdir=$2,workdir=$3" "$4" || exit 125; shift 4; done; '
    'shift; exec "$@"'
)


def lay_out(bundle: dict[str, Any], root: Path, store: SecretStore) -> Path:
    """Write the bundle's directories, files and (real) secrets under `root`."""
    for d in bundle["directories"]:
        (root / d["path"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    for item in [*bundle["files"], *({**s, "content": store.value(s["name"])} for s in bundle["secrets"])]:
        target = root / item["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(item["content"])
        os.chmod(target, int(item["mode"], 8))
    for sub in OVERLAID:
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def run_applied(root: Path, argv: list[str], *, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    quads: list[str] = []
    for sub in OVERLAID:
        upper, work = (
            root.parent / f".{root.name}-scratch" / sub / "upper",
            root.parent / f".{root.name}-scratch" / sub / "work",
        )
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        quads += [str(root / sub), str(upper), str(work), f"/{sub}"]
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _OVERLAY_SH, "sh", *quads, "--", *argv]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False)
