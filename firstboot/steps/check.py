"""The check step (converge only): when anything changed, every config of the new bundle that names its daemon's
own test (File.check, e.g. `haproxy -c -q -f /etc/haproxy/haproxy.cfg`) passes it before any service reloads.

All checkers run when anything changed, not only those of changed files: a config may include or name files
it does not contain (nftables.conf includes the tier sets, haproxy.cfg names the certificate). A refusal is a
StepFailed carrying the checker's last lines; the converge policy then puts the changed files back. A checker
must only read: one that changed a file of the bundle (keepalived's --config-test=FILE appends its log to FILE)
is a refusal too, so the file goes back rather than a daemon loading what a checker wrote.

On the host (root /) each checker runs as named, on the real paths, on the host's network. Under another root
(tests, image trees) it runs as if the tree were this machine: in a private mount namespace where the tree's
etc, var/lib and var/cache are overlaid on this machine's, with throwaway upper layers, so the checker reads the
tree's files at the paths it names (nginx's includes and HAProxy's certificate too, which rewriting its
arguments would miss) and whatever it writes vanishes; and in a network namespace of its own holding an
interface named like the host's cluster NIC (keepalived's test wants it; an address nginx listens on binds
there), so nothing it binds or probes touches this machine. Root, unshare(1) and ip(8) needed.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from firstboot.errors import StepFailed
from firstboot.paths import Paths
from firstboot.steps.context import Outcome, StepContext
from kiln.fsutil import differs
from kiln.run import CommandError, run

TIMEOUT = 60.0  # seconds for one checker
TAIL_LINES = 8  # of a refusing checker's output, in the failure (and the event the server shows)
LINE_CHARS = 300
OVERLAID = ("etc", "var/lib", "var/cache")
PEER = "kiln-chk-peer"  # the other end of the stand-in NIC, in the same private namespace
# brings up a NIC named $1, mounts one overlay per "lower target scratch" triple, then execs the command after "--"
_AS_THE_HOST = (
    f'ip link add "$1" type veth peer name {PEER} && ip link set "$1" up || exit 125; shift; '
    'while [ "$1" != "--" ]; do '
    'mount -t overlay overlay -o "lowerdir=$1:$2,upperdir=$3/upper,workdir=$3/work" "$2" || exit 125; shift 3; done; '
    'shift; exec "$@"'
)
NEXT = (
    "the previous files were put back and the services keep running the previous generation; fix the config "
    "in roles.yaml (./inv plan shows the change), then publish it again"
)


def _tail(output: str) -> str:
    lines = [line[:LINE_CHARS] for line in output.strip().splitlines()[-TAIL_LINES:]]
    return "\n".join(lines) or "(no output)"


def run_checker(paths: Paths, argv: Sequence[str], interface: str) -> subprocess.CompletedProcess[str]:
    """`argv` against the files under `paths.root` as if they were this machine's, whose cluster NIC is called
    `interface` (see the module docstring)."""
    if paths.is_host:
        return _run(list(argv))
    with tempfile.TemporaryDirectory(prefix="firstboot-check-") as scratch:
        triples: list[str] = []
        for sub in OVERLAID:
            if not Path("/", sub).is_dir():
                continue
            layer = Path(scratch) / sub.replace("/", "-")
            for part in ("upper", "work", "empty"):
                (layer / part).mkdir(parents=True)
            tree = paths.root / sub  # a tree without it still gets the layer: what a checker writes stays in it
            triples += [str(tree if tree.is_dir() else layer / "empty"), f"/{sub}", str(layer)]
        unshare = ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", _AS_THE_HOST, "sh"]
        return _run([*unshare, interface, *triples, "--", *argv])


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return run(argv, check=False, timeout=TIMEOUT)
    except CommandError as e:  # not found, or timed out
        return subprocess.CompletedProcess(argv, e.returncode, e.output)


def check(ctx: StepContext) -> Outcome:
    """Every checker of the bundle when anything changed; StepFailed at the first refusal, with its output."""
    checked = [f for f in ctx.bundle.files if f.check]
    if not ctx.changed:
        return Outcome("nothing changed: no checker to run")
    if not checked:
        return Outcome("no file of this bundle names a checker")
    for f in checked:
        result = run_checker(ctx.paths, f.check, ctx.bundle.network.interface)
        if result.returncode != 0:
            raise StepFailed(
                f"{f.path}: `{shlex.join(f.check)}` refused it (exit {result.returncode}):\n{_tail(result.stdout)}",
                NEXT,
            )
    written = [f for f in ctx.bundle.files if differs(ctx.paths.under(f.path), f.content.encode(), int(f.mode, 8))]
    if written:
        raise StepFailed(
            f"a checker changed {', '.join(f.path for f in written)}; a checker must only read "
            f"(its argv: {', '.join(shlex.join(f.check) for f in checked)})",
            NEXT,
        )
    return Outcome(f"{len(checked)} configs passed their checkers: {', '.join(f.path for f in checked)}")
