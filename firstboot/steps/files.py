"""The network, files and secrets steps: directories and files onto disk with mode and owner."""

from __future__ import annotations

from typing import Any

from firstboot import files
from firstboot import nic as nic_name
from firstboot.errors import StepFailed
from firstboot.log import LOG
from firstboot.steps.context import Outcome, StepContext
from kiln.run import CommandError, run

NETWORK_PATHS = ("/etc/hostname", "/etc/hosts", "/etc/systemd/network/")
WITHHELD = "secrets were already handed out; re-arm the host with ./inv reprovision HOST"


def _is_network(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in NETWORK_PATHS)


def _mode(entry: dict[str, Any]) -> int:
    return int(str(entry["mode"]), 8)


def _write(ctx: StepContext, entries: list[dict[str, Any]], data_of: Any) -> list[str]:
    """Compare every entry first and note what will change (a crash mid-write still restarts services), then write."""
    plans = []
    for entry in entries:
        target = ctx.paths.under(entry["path"])
        uid, gid = ctx.owners.ids(entry)
        plans.append((entry["path"], target, data_of(entry), _mode(entry), uid, gid))
    differing = [path for path, target, data, mode, uid, gid in plans if _differs(target, data, mode, uid, gid)]
    if differing:
        ctx.note_changes(differing)
    for path, target, data, mode, uid, gid in plans:
        if path in differing:
            files.ensure_file(target, data, mode, uid, gid)
    return differing


def _differs(target: Any, data: bytes, mode: int, uid: int, gid: int) -> bool:
    try:
        st = target.lstat()
        return not (target.is_file() and not target.is_symlink() and target.read_bytes() == data
                    and (st.st_mode & 0o7777) == mode and st.st_uid == uid and st.st_gid == gid)  # fmt: skip
    except FileNotFoundError:
        return True


def _summary(changed: list[str], total: int, what: str) -> str:
    return f"{len(changed)} of {total} {what} changed" if changed else f"unchanged ({total} {what})"


def network(ctx: StepContext) -> Outcome:
    """Hostname, /etc/hosts and the systemd-networkd files; live: set the hostname, reload networkd."""
    entries = [f for f in ctx.bundle["files"] if _is_network(f["path"])]
    changed = _write(ctx, entries, lambda f: f["content"].encode())
    name = ctx.bundle["host"]["name"]
    detail = _summary(changed, len(entries), "files") + f"; hostname {name}"
    if ctx.live and ctx.paths.is_host:
        try:
            if run(["hostname"], check=False).stdout.strip() != name:
                run(["hostname", name])
                changed.append("hostname")
            nic = nic_name.ensure_name(ctx.bundle["host"]["mac"], ctx.bundle["network"]["interface"])
            detail += f"; {nic}"
            if "renamed" in nic or any(p.startswith("/etc/systemd/network/") for p in changed):
                run(["networkctl", "reload"], check=False)
                run(["networkctl", "reconfigure", ctx.bundle["network"]["interface"]], check=False)
        except CommandError as e:
            raise StepFailed(f"setting hostname/network: {e}") from None
    return Outcome(detail, tuple(changed))


def files_step(ctx: StepContext) -> Outcome:
    """Directories, then every other file; live: changed sysctl.d files are applied at once."""
    dirs_changed = []
    for d in ctx.bundle.get("directories", []):
        uid, gid = ctx.owners.ids(d)
        try:
            if files.ensure_dir(ctx.paths.under(d["path"]), _mode(d), uid, gid):
                dirs_changed.append(d["path"])
        except NotADirectoryError as e:
            raise StepFailed(str(e), "remove what is in the way, then run `firstboot run`") from None
    entries = [f for f in ctx.bundle["files"] if not _is_network(f["path"])]
    changed = _write(ctx, entries, lambda f: f["content"].encode())
    if ctx.live and ctx.paths.is_host:
        for path in changed:
            if path.startswith("/etc/sysctl.d/"):
                try:
                    run(["sysctl", "-p", path])
                except CommandError as e:
                    raise StepFailed(f"applying {path}: {e}") from None
    detail = _summary(changed, len(entries), "files")
    if dirs_changed:
        detail += f"; {len(dirs_changed)} directories changed"
    return Outcome(detail, tuple(dirs_changed + changed))


def secrets(ctx: StepContext) -> Outcome:
    """Secret values from the bundle onto disk; a withheld secret must already be there."""
    present, missing = [], []
    for s in ctx.bundle.get("secrets", []):
        if s.get("value") is not None:
            present.append(s)
        elif not ctx.paths.under(s["path"]).exists():
            missing.append(s)
    if missing and ctx.bundle.get("secrets_withheld"):
        names = ", ".join(s["name"] for s in missing)
        host = ctx.bundle["host"]["name"]
        raise StepFailed(f"secrets {names} are not on this host and the server withheld them",
                         f"{WITHHELD} (here: ./inv reprovision {host})")  # fmt: skip
    if missing and ctx.live:
        raise StepFailed(f"the bundle carries no value for {', '.join(s['name'] for s in missing)}")
    for s in missing:
        LOG.warning("secret %s: no value in the bundle, %s not written", s["name"], s["path"])
    changed = _write(ctx, present, lambda s: str(s["value"]).encode())
    detail = _summary(changed, len(present), "secrets")
    if missing:
        detail += f"; {len(missing)} without a value skipped"
    return Outcome(detail, tuple(changed))
