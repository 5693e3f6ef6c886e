"""A rendered host laid out as a root tree, and commands run as if that tree were applied to this machine.

The checkers read their configs at the real paths (/etc/haproxy/haproxy.cfg, ...): each command runs in a
private mount namespace where the host's tree is overlaid on this machine's /etc and /var; what the
command writes lands in a scratch directory beside the tree. Nothing outside the namespace changes.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

from kiln.bundle import Bundle
from kiln.model import Cluster
from kiln.render import render
from kiln.secrets import SecretStore

OVERLAID = ("etc", "var/lib", "var/cache")

# Mounts an overlay for each "tree upper work target" quadruple, then execs the command after "--".
_OVERLAY_SH = (
    'while [ "$1" != "--" ]; do '
    'mount -t overlay overlay -o "lowerdir=$1:$4,upperdir=$2,workdir=$3" "$4" || exit 125; shift 4; done; '
    'shift; exec "$@"'
)


def applied_bundles(cluster: Cluster, store: SecretStore) -> dict[str, Bundle]:
    """Every host's bundle as the agent applies it: cluster-wide contents inline (the agent fetches them by
    digest), secret values filled in (the server fills them for the fetch)."""
    rendered = render(cluster)
    bundles = {}
    for name, b in rendered.bundles.items():
        files = tuple(replace(f, content=rendered.shared[f.shared], shared="") if f.shared else f for f in b.files)
        bundles[name] = replace(b, files=files).with_secret_values({n: store.value(n) for n in b.secret_names()})
    return bundles


def lay_out(bundle: Bundle, root: Path, store: SecretStore) -> Path:
    """Write the bundle's directories, files (contents inline: see applied_bundles) and real secrets under `root`."""
    for d in bundle.directories:
        (root / d.path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    files = [(f.path, f.content, f.mode) for f in bundle.files]
    files += [(s.path, store.value(s.name), s.mode) for s in bundle.secrets]
    for path, content, mode in files:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        os.chmod(target, int(mode, 8))
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
