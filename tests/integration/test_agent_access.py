"""The operators' admin account, as the agent makes it: `firstboot apply` of a rendered bundle into a host tree
(its /etc/passwd, shadow, group and login.defs this machine's, as on a built image) creates the account with no
password and no ageing, its home and keys with the right modes and owner; a converge to a generation without one
of the keys removes that key (and a line added by hand) and leaves the account as it was."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from firstboot import agent
from firstboot.converge import STEPS, ConvergePolicy, Record
from firstboot.paths import Paths
from firstboot.report import EventQueue, Reporter
from firstboot.steps.fetch import Fetched
from kiln.bundle import Bundle
from kiln.model import parse_roles
from kiln.render import render
from tests.unit.test_model_access import ALICE, BOB, CAROL

pytestmark = pytest.mark.integration

HOME = "home/ops"
KEYS = f"{HOME}/.ssh/authorized_keys"


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy(f"/etc/{name}", root / "etc" / name)
    # the image's hardened login.defs: a password ageing the admin account must not inherit
    with (root / "etc/login.defs").open("a") as defs:
        defs.write("PASS_MAX_DAYS 365\nPASS_MIN_DAYS 1\n")
    return root


def _bundle(shipped: Path, keys: list[str], generation: int) -> Bundle:
    text = shipped.read_text().replace("\nroles:\n", f"\naccess: {{admin_user: ops, ssh_keys: {keys!r}}}\nroles:\n")
    rendered = render(parse_roles(text))
    b = rendered.bundles["web1"]
    files = tuple(replace(f, content=rendered.shared[f.shared], shared="") if f.shared else f for f in b.files)
    return replace(b, files=files, generation=generation)


def _apply(bundle: Bundle, root: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / f"bundle-{bundle.generation}.json"
    path.write_bytes(bundle.to_json())
    argv = [sys.executable, "-m", "firstboot", "apply", "--bundle", str(path), "--root", str(root), "--no-services"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _entry(root: Path, db: str, name: str) -> list[str]:
    [line] = [line for line in (root / "etc" / db).read_text().splitlines() if line.startswith(f"{name}:")]
    return line.split(":")


def test_the_agent_makes_the_admin_account_and_converges_its_keys(shipped_roles: Path, tmp_path: Path) -> None:
    root = _tree(tmp_path / "web1")
    first = _apply(_bundle(shipped_roles, [ALICE, BOB], 1), root, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "admin account ops" in first.stdout

    name, _, uid, gid, _, home, shell = _entry(root, "passwd", "ops")
    assert (home, shell) == ("/home/ops", "/bin/bash") and int(uid) >= 1000 and gid == uid
    if (root / "etc/shadow").exists():
        shadow = _entry(root, "shadow", "ops")
        # no password (`*` matches none: not even sudo could ask for one), no ageing that would lock keys out
        assert shadow[1] == "*" and shadow[4] == "" and shadow[6] == ""
    for path, mode in ((HOME, 0o700), (f"{HOME}/.ssh", 0o700), (KEYS, 0o600)):
        st = (root / path).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, int(uid), int(gid)), path
    assert [line for line in (root / KEYS).read_text().splitlines() if not line.startswith("#")] == [ALICE, BOB]
    sudoers = (root / "etc/sudoers.d/60-kiln-admin").read_text()
    assert "ops ALL=(ALL:ALL) NOPASSWD: ALL" in sudoers
    assert stat.S_IMODE((root / "etc/sudoers.d/60-kiln-admin").stat().st_mode) == 0o440

    again = _apply(_bundle(shipped_roles, [ALICE, BOB], 1), root, tmp_path)
    assert again.returncode == 0 and "admin account" not in again.stdout, again.stdout
    assert _entry(root, "passwd", "ops")[2] == uid  # not made twice

    # day 2: bob's key is dropped, carol's added; a key someone added by hand goes too
    with (root / KEYS).open("a") as keys:
        keys.write('command="/bin/sh" ' + BOB + "\n")
    paths = Paths(root)
    record = Record(paths, Reporter(EventQueue(paths.events)))
    second = _bundle(shipped_roles, [ALICE, CAROL], 2)
    code = agent.execute(ConvergePolicy(paths, lambda: Fetched("the test", bundle=second), record), STEPS)
    assert code == 0
    assert [line for line in (root / KEYS).read_text().splitlines() if not line.startswith("#")] == [ALICE, CAROL]
    st = (root / KEYS).stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, int(uid))
    assert record.load().generation == 2
    assert [line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("ops:")] == [
        ":".join([name, "x" if (root / "etc/shadow").exists() else "*", uid, gid, "kiln operators", home, shell])
    ]
