"""The check step (converge only): when anything changed, every config of the new bundle that names its daemon's
own test (File.check, e.g. `haproxy -c -q -f /etc/haproxy/haproxy.cfg`) passes it before any service reloads.

All checkers run when anything changed, not only those of changed files: a config may include or name files
it does not contain (nftables.conf includes the tier sets, haproxy.cfg names the certificate). A refusal is a
StepFailed carrying the checker's last lines; the converge policy then puts the changed files back. A checker
must only read: one that changed a file of the bundle (keepalived's --config-test=FILE appends its log to FILE)
is a refusal too, so the file goes back rather than a daemon loading what a checker wrote.

On the host (root /) each checker runs as named, on the real paths. Under another root (tests, image trees) it
runs in a private mount namespace (unshare --mount) where the tree's etc, var/lib and var/cache are overlaid on
this machine's, with throwaway upper layers: the checker reads the tree's files at the paths it names (nginx's
includes and HAProxy's certificate too, which rewriting its arguments would miss), whatever it writes vanishes
with the namespace, and nothing outside the namespace changes (root and unshare(1) needed).
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
# mounts one overlay per "lower target scratch" triple, then execs the command after "--"
_MOUNT_THEN_EXEC = (
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


def run_checker(paths: Paths, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`argv` against the files under `paths.root` as if they were this machine's (see the module docstring)."""
    if paths.is_host:
        return _run(list(argv))
    with tempfile.TemporaryDirectory(prefix="firstboot-check-") as scratch:
        triples: list[str] = []
        for sub in OVERLAID:
            tree = paths.root / sub
            if not tree.is_dir() or not Path("/", sub).is_dir():
                continue
            layer = Path(scratch) / sub.replace("/", "-")
            (layer / "upper").mkdir(parents=True)
            (layer / "work").mkdir()
            triples += [str(tree), f"/{sub}", str(layer)]
        unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _MOUNT_THEN_EXEC, "sh"]
        return _run([*unshare, *triples, "--", *argv])


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
        result = run_checker(ctx.paths, f.check)
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
