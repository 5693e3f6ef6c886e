"""The operators' admin account (the bundle's `admin`): created once, its authorized_keys kept equal to the bundle's.

The account is an ordinary one (a UID from 1000, its own group, /bin/bash, home /home/NAME mode 0700) with no
password: the shadow field is `*`, which matches no password, and no password ageing (with PASS_MAX_DAYS 365
from the hardened login.defs, an aged password would expire and lock key logins out a year later). sudo comes
from the rendered /etc/sudoers.d/60-kiln-admin. `~/.ssh/authorized_keys` (0600, the account's) is the bundle's
keys, whole: a key removed from roles.yaml vanishes at the next converge. Into a tree (`firstboot apply --root`)
useradd edits that tree's /etc files (`--prefix`), when the tree has an /etc/passwd; on the host, the host's.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from firstboot.errors import StepFailed
from firstboot.log import LOG
from firstboot.owners import Owners
from firstboot.steps.context import StepContext
from kiln.bundle import Admin
from kiln.fsutil import differs, ensure_file
from kiln.run import CommandError, run

SHELL = "/bin/bash"
HOME_MODE = 0o700
KEYS_MODE = 0o600


def home_of(admin: Admin) -> str:
    return f"/home/{admin.name}"


def keys_path(admin: Admin) -> str:
    return str(PurePosixPath(home_of(admin)) / ".ssh" / "authorized_keys")


def _ids(ctx: StepContext, name: str) -> tuple[int, int] | None:
    return Owners(ctx.paths.root, strict=False).account(name)  # read afresh: useradd may just have added it


def _useradd(ctx: StepContext, admin: Admin) -> None:
    prefix = [] if ctx.paths.is_host else ["--prefix", str(ctx.paths.root)]
    argv = [
        "useradd",
        *prefix,
        "--user-group",
        "--no-create-home",  # made below with mode 0700, without /etc/skel
        "--home-dir",
        home_of(admin),
        "--shell",
        SHELL,
        "--comment",
        "kiln operators",
        "--password",
        "*",
        "--inactive",
        "-1",
        "-K",
        "PASS_MAX_DAYS=-1",
        "-K",
        "PASS_MIN_DAYS=0",
        admin.name,
    ]
    try:
        run(argv)
    except CommandError as e:
        raise StepFailed(f"creating the admin account {admin.name}: {e}", "see useradd's message above") from None


def _ensure_dir(ctx: StepContext, path: str, ids: tuple[int, int]) -> bool:
    from firstboot.steps.files import ensure_dir

    try:
        return ensure_dir(ctx.paths.under(path), HOME_MODE, *ids)
    except NotADirectoryError as e:
        raise StepFailed(str(e), "remove what is in the way, then run `firstboot run`") from None


def ensure_admin(ctx: StepContext) -> list[str]:
    """Create the admin account when it is missing, fix its home's and keys' modes, write its keys; return the
    host paths that changed (`/etc/passwd` when the account was created)."""
    admin = ctx.bundle.admin
    if admin is None:
        return []
    if not ctx.paths.is_host and not ctx.paths.under("/etc/passwd").exists():
        # a tree that is no system (a test's, a preview's): useradd would start a passwd holding only this account,
        # and every other owner would stop resolving in it
        LOG.warning("no /etc/passwd under %s: the admin account %s is not made there", ctx.paths.root, admin.name)
        return []
    changed = []
    ids = _ids(ctx, admin.name)
    if ids is None:
        _useradd(ctx, admin)
        ids = _ids(ctx, admin.name)
        if ids is None:
            raise StepFailed(f"useradd did not create {admin.name}", "see /etc/passwd and useradd's configuration")
        changed.append("/etc/passwd")
    home = home_of(admin)
    for path in (home, f"{home}/.ssh"):
        if _ensure_dir(ctx, path, ids):
            changed.append(path)
    keys, target = keys_path(admin), ctx.paths.under(keys_path(admin))
    data = admin.authorized_keys().encode()
    if differs(target, data, KEYS_MODE, ids):
        ctx.note_changes([keys])  # converge keeps the old file to put back if the generation fails
        ensure_file(target, data, KEYS_MODE, ids)
        changed.append(keys)
    return changed
