"""The network, files and secrets steps: directories and files onto disk with mode and owner.

Every entry is compared first (content, mode, owner); what differs is noted in the state before it is written,
so a crash mid-write still restarts the services it affects. Writes go through kiln.fsutil: temp file in the
same directory, mode and owner set, synced, renamed; an identical file with another mode or owner is fixed in place.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from firstboot import nic as nic_name
from firstboot.errors import StepFailed
from firstboot.log import LOG
from firstboot.steps import account
from firstboot.steps.context import Outcome, StepContext
from kiln.bundle import File, Secret
from kiln.fsutil import differs, ensure_file, remove_stale_temps
from kiln.run import CommandError, run

NETWORKD_DIR = "/etc/systemd/network/"
NETWORK_PATHS = ("/etc/hostname", "/etc/hosts", NETWORKD_DIR)
# the names kiln renders (kiln/roles/networkd.py): kiln0, its bond members kiln0mN, its VLANs kiln0.ID; an
# operator's 10-kiln0-extra.network is not one of them and stays
KILN_NETWORKD = re.compile(r"10-kiln0(m\d+|\.\d+)?\.(link|network|netdev)")
SYSCTL_DIR = "/etc/sysctl.d/"
WITHHELD = "secrets were already handed out; re-arm the host with ./inv reprovision HOST"


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
    if stat.S_IMODE(st.st_mode) == mode and (st.st_uid, st.st_gid) == (uid, gid):
        return False
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return True


def _is_network(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in NETWORK_PATHS)


@dataclass(frozen=True)
class _Write:
    path: str  # on the host
    target: Path  # under the root
    data: bytes
    mode: int
    owner: tuple[int, int]


def _write(ctx: StepContext, entries: Sequence[File | Secret], *, durable: bool = False) -> list[str]:
    """Compare every entry, note what will change, then write it; return the host paths that changed."""
    writes = [
        _Write(
            e.path,
            ctx.paths.under(e.path),
            (e.content if isinstance(e, File) else e.value or "").encode(),
            int(e.mode, 8),
            ctx.owners.ids(e),
        )
        for e in entries
    ]
    differing = [w for w in writes if differs(w.target, w.data, w.mode, w.owner)]
    if differing:
        ctx.note_changes([w.path for w in differing])
    for directory in {w.target.parent for w in differing}:
        remove_stale_temps(directory)  # what a write interrupted by a power cut left beside its file
    for w in differing:
        ensure_file(w.target, w.data, w.mode, w.owner, durable=durable)
    return [w.path for w in differing]


def _summary(changed: list[str], total: int, what: str) -> str:
    return f"{len(changed)} of {total} {what} changed" if changed else f"unchanged ({total} {what})"


def _drop_stale_networkd(ctx: StepContext, entries: Sequence[File]) -> list[str]:
    """Remove kiln's networkd files (10-kiln0*) the bundle no longer lists: a VLAN or a bond roles.yaml dropped,
    or the 10-kiln0.link of a host whose kiln0 became a bond (it would name the NIC kiln0, the bond's name).
    Noted first, so a converge that fails its checks puts them back. Return the host paths removed."""
    listed = {e.path for e in entries}
    if not any(path.startswith(NETWORKD_DIR) for path in listed):
        return []  # a bundle that renders no networkd file leaves the directory as it is
    directory = ctx.paths.under(NETWORKD_DIR)
    stale = [
        f"{NETWORKD_DIR}{p.name}"
        for p in sorted(directory.glob("10-kiln0*"))
        if KILN_NETWORKD.fullmatch(p.name) and f"{NETWORKD_DIR}{p.name}" not in listed
    ]
    if stale:
        ctx.note_changes(stale)
    for path in stale:
        ctx.paths.under(path).unlink(missing_ok=True)
    return stale


def network(ctx: StepContext) -> Outcome:
    """Hostname, /etc/hosts and the systemd-networkd files (kiln's stale ones removed); live: set the hostname,
    name the NIC as its rendered .link does, reload networkd."""
    host, interface = ctx.bundle.host, ctx.bundle.network.interface
    entries = [f for f in ctx.bundle.files if _is_network(f.path)]
    changed = _write(ctx, entries)
    removed = _drop_stale_networkd(ctx, entries)
    changed += removed
    detail = _summary(changed, len(entries), "files") + (f", {len(removed)} removed" if removed else "")
    detail += f"; hostname {host.name}"
    if ctx.live and ctx.paths.is_host:
        try:
            if run(["hostname"], check=False).stdout.strip() != host.name:
                run(["hostname", host.name])
                changed.append("hostname")
            nic = nic_name.ensure_name(host.mac, nic_name.link_name(entries, host.mac) or interface)
            detail += f"; {nic}"
            if "renamed" in nic or any(p.startswith("/etc/systemd/network/") for p in changed):
                run(["networkctl", "reload"], check=False)
                run(["networkctl", "reconfigure", interface], check=False)
        except CommandError as e:
            raise StepFailed(f"setting hostname/network: {e}") from None
    return Outcome(detail, tuple(changed))


def _apply_sysctl(ctx: StepContext, changed: Sequence[str]) -> list[str]:
    """Live: load the changed sysctl.d files at once; return those loaded."""
    loaded = [path for path in changed if path.startswith(SYSCTL_DIR)]
    if not (ctx.live and ctx.paths.is_host):
        return []
    for path in loaded:
        try:
            run(["sysctl", "-p", path])
        except CommandError as e:
            raise StepFailed(f"applying {path}: {e}") from None
    return loaded


def sysctl(ctx: StepContext) -> Outcome:
    """Converge's own step for what `files` does live at the first boot: the changed sysctl.d files are loaded
    only once their generation passed its checks."""
    if not any(p.startswith(SYSCTL_DIR) for p in ctx.changed):
        return Outcome("unchanged")
    if not (ctx.live and ctx.paths.is_host):
        return Outcome("skipped (offline)")
    loaded = _apply_sysctl(ctx, sorted(ctx.changed))
    return Outcome(f"loaded {', '.join(loaded)}")


def files(ctx: StepContext) -> Outcome:
    """The admin account and its keys, directories, then every other file; live: changed sysctl.d files are
    applied at once."""
    admin_changed = account.ensure_admin(ctx)
    dirs_changed = []
    for d in ctx.bundle.directories:
        uid, gid = ctx.owners.ids(d)
        try:
            if ensure_dir(ctx.paths.under(d.path), int(d.mode, 8), uid, gid):
                dirs_changed.append(d.path)
        except NotADirectoryError as e:
            raise StepFailed(str(e), "remove what is in the way, then run `firstboot run`") from None
    entries = [f for f in ctx.bundle.files if not _is_network(f.path)]
    changed = _write(ctx, entries)
    _apply_sysctl(ctx, changed)
    detail = _summary(changed, len(entries), "files")
    if dirs_changed:
        detail += f"; {len(dirs_changed)} directories changed"
    if admin_changed and ctx.bundle.admin is not None:
        detail += f"; admin account {ctx.bundle.admin.name}: {', '.join(admin_changed)}"
    return Outcome(detail, tuple(admin_changed + dirs_changed + changed))


def secrets(ctx: StepContext) -> Outcome:
    """Secret values from the bundle onto disk (synced: they exist nowhere else); a withheld one must be there."""
    present = [s for s in ctx.bundle.secrets if s.value is not None]
    missing = [s for s in ctx.bundle.secrets if s.value is None and not ctx.paths.under(s.path).exists()]
    if missing and ctx.bundle.secrets_withheld:
        names = ", ".join(s.name for s in missing)
        raise StepFailed(
            f"secrets {names} are not on this host and the server withheld them",
            f"{WITHHELD} (here: ./inv reprovision {ctx.bundle.host.name})",
        )
    if missing and ctx.live:
        raise StepFailed(f"the bundle carries no value for {', '.join(s.name for s in missing)}")
    for s in missing:
        LOG.warning("secret %s: no value in the bundle, %s not written", s.name, s.path)
    changed = _write(ctx, present, durable=True)
    detail = _summary(changed, len(present), "secrets")
    if missing:
        detail += f"; {len(missing)} without a value skipped"
    return Outcome(detail, tuple(changed))
