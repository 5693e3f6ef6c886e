"""Every rendered config through its real checker, at its real path, as if applied to a host of its role: what
`./inv apply` does before it publishes (and the tests do to every render).

A host's files (shared contents inline, real secrets: HAProxy loads its certificate) are laid out in a private
directory; each checker runs in a private mount namespace where that tree is overlaid on this machine's /etc and
/var, inside a network namespace that has the cluster NIC (keepalived's check needs the interface it names).
Nothing outside the namespaces changes. Root, unshare and the daemons' packages are needed (./inv installs them).

    with Checker() as checker:
        refusals = checker.check(bundle, shared, secrets)   # [] when every checker accepts
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kiln import roles
from kiln.bundle import Bundle
from kiln.roles import common
from kiln.roles.context import INTERFACE
from kiln.roles.spec import FileSpec

OVERLAID = ("etc", "var/lib", "var/cache")
# Mounts an overlay for each "tree upper work target" quadruple, then execs the command after "--".
_OVERLAY_SH = (
    'while [ "$1" != "--" ]; do '
    'mount -t overlay overlay -o "lowerdir=$1:$4,upperdir=$2,workdir=$3" "$4" || exit 125; shift 4; done; '
    'shift; exec "$@"'
)
TIMEOUT = 60


@dataclass(frozen=True)
class Refusal:
    """A checker that refused a rendered config: which host, which file, the command and what it said."""

    host: str
    path: str
    argv: tuple[str, ...]
    output: str

    def format(self) -> str:
        last = "\n    ".join(self.output.strip().splitlines()[-8:])
        return f"{self.host}: {self.path}: `{' '.join(self.argv)}` refused it:\n    {last}"


def checked_files(role: str) -> tuple[FileSpec, ...]:
    """The files of a host of `role` that have a checker."""
    return tuple(f for f in (*common.FILES, *roles.get(role).files) if f.check)


class Checker(AbstractContextManager["Checker"]):
    def __enter__(self) -> Checker:
        self.netns = f"kiln-chk-{uuid.uuid4().hex[:8]}"
        self.top = Path(tempfile.mkdtemp(prefix="kiln-check-"))
        os.chmod(self.top, 0o700)  # real secrets are laid out here
        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "-n", self.netns, "link", "add", INTERFACE, "type", "veth", "peer", "name", f"{INTERFACE}-p"])
        _run(["ip", "-n", self.netns, "link", "set", INTERFACE, "up"])
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        shutil.rmtree(self.top, ignore_errors=True)

    def check(
        self, bundle: Bundle, shared: Mapping[str, str] | None = None, secrets: Mapping[str, str] | None = None
    ) -> list[Refusal]:
        """Each checked file of the bundle through its checker: the refusals, [] when all accept. `shared`: digest
        -> content for its shared files; `secrets`: name -> value for secrets the bundle does not carry."""
        root = self.top / bundle.host.name
        lay_out(bundle, root, shared, secrets)
        refusals = []
        for spec in checked_files(bundle.host.role):
            result = run_applied(root, list(spec.check), netns=self.netns)
            if result.returncode != 0:
                refusals.append(Refusal(bundle.host.name, spec.path, spec.check, result.stdout))
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root.parent / f".{root.name}-scratch", ignore_errors=True)
        return refusals


def lay_out(
    bundle: Bundle, root: Path, shared: Mapping[str, str] | None = None, secrets: Mapping[str, str] | None = None
) -> Path:
    """The bundle's directories, files and secrets under `root`, with their modes (see Checker.check)."""
    shared, secrets = shared or {}, secrets or {}
    for d in bundle.directories:
        (root / d.path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    items = [(f.path, shared[f.shared] if f.shared else f.content, f.mode) for f in bundle.files]
    items += [(s.path, secrets.get(s.name) or s.value or "", s.mode) for s in bundle.secrets]
    for path, content, mode in items:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        os.chmod(target, int(mode, 8))
    for sub in OVERLAID:
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def run_applied(root: Path, argv: Sequence[str], *, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` as if `root` were applied to this machine: root's etc, var/lib and var/cache over the real ones."""
    quads: list[str] = []
    for sub in OVERLAID:
        scratch = root.parent / f".{root.name}-scratch" / sub
        (scratch / "upper").mkdir(parents=True, exist_ok=True)
        (scratch / "work").mkdir(parents=True, exist_ok=True)
        quads += [str(root / sub), str(scratch / "upper"), str(scratch / "work"), f"/{sub}"]
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _OVERLAY_SH, "sh", *quads, "--", *argv]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT, check=False
    )


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def missing_tools() -> list[str]:
    """The checkers and tools this machine lacks (empty: ./inv apply can check)."""
    tools = {"unshare", "ip", *(a for r in roles.names() for f in checked_files(r) for a in f.check[:1])}
    return sorted(t for t in tools if not shutil.which(t) and not Path("/usr/sbin", t).exists())
