"""The firewall and services steps: they touch the running system, so they only run live on the host."""

from __future__ import annotations

import os

from firstboot.errors import StepFailed
from firstboot.nic import holds_address
from firstboot.probe import ProbeFailed, wait_for
from firstboot.steps.context import Outcome, StepContext
from kiln.run import CommandError, run

NFT_CONF = "/etc/nftables.conf"
NFT_INCLUDES = "/etc/nftables.d/"  # what it includes (the tier sets, the same on every host)
UNIT_DIRS = ("/etc/systemd/system/", "/lib/systemd/system/")


def firewall(ctx: StepContext) -> Outcome:
    """Check then load /etc/nftables.conf (persisted by that file and nftables.service); skip when already loaded.

    Live, it loads into the network namespace the agent runs in, whatever the root (tests use their own namespaces).
    """
    if not ctx.live:
        return Outcome("skipped (offline)")
    conf = ctx.paths.under(NFT_CONF)
    loaded = run(["nft", "list", "table", "inet", "filter"], check=False).returncode == 0
    if loaded and not any(p == NFT_CONF or p.startswith(NFT_INCLUDES) for p in ctx.changed):
        return Outcome("unchanged (ruleset loaded)")
    includes = ["-I", str(ctx.paths.under("/etc"))]  # its relative includes come from the same tree
    try:
        run(["nft", *includes, "-c", "-f", conf])
        run(["nft", *includes, "-f", conf])
    except CommandError as e:
        raise StepFailed(
            f"nftables: {e}", f"fix {NFT_CONF} (render it with ./inv render and check with nft -c -f)"
        ) from None
    return Outcome("ruleset loaded", (NFT_CONF,))


def _systemctl(*args: str, env: dict[str, str] | None = None) -> str:
    try:
        return run(["systemctl", *args], env=env).stdout.strip()
    except CommandError as e:
        raise StepFailed(f"systemd: {e}", "see `journalctl -u UNIT` for the unit named above") from None


# What `systemctl is-enabled` prints for a unit it counts as enabled (exit 0 in systemctl(1)).
ENABLED_STATES = {"enabled", "enabled-runtime", "static", "alias", "indirect", "generated", "transient"}
NETWORKD = "systemd-networkd.service"
ADDRESS_WAIT = 60.0


def _states(query: str, units: list[str]) -> dict[str, str]:
    """One `systemctl is-enabled|is-active` for every unit: it prints one state per unit, in order."""
    if not units:
        return {}
    lines = run(["systemctl", query, *units], check=False).stdout.split()
    return dict(zip(units, lines + ["unknown"] * (len(units) - len(lines)), strict=True))


def _address_present(ip: str) -> str:
    if not holds_address(ip):
        raise ProbeFailed(f"{ip} is not configured on any interface yet")
    return f"{ip} configured"


def services(ctx: StepContext) -> Outcome:
    """Enable and start each service; restart (or reload) one whose files changed. Offline: skipped.

    One systemctl call per kind of action, not per unit: under emulation every call costs seconds and each
    `enable` reloads systemd, which made this step take four minutes per host in the lab. `enable` skips the
    SysV half too (SYSTEMCTL_SKIP_SYSV): for a unit that also ships an /etc/init.d script (nginx, haproxy, the
    exporters) systemctl runs update-rc.d twice, and each run reloads systemd whatever --no-reload says; six
    reloads of ~15 s each were most of web1's 115 s step in the PXE lab. The rc.d links only matter to SysV init.
    """
    if not ctx.live or not ctx.paths.is_host:
        return Outcome("skipped (offline)")
    units = ctx.bundle.services
    names = [svc.unit for svc in units]
    if any(p.startswith(UNIT_DIRS) for p in ctx.changed):
        _systemctl("daemon-reload")
    active = _states("is-active", names)
    enabled = _states("is-enabled", [svc.unit for svc in units if svc.enable])
    running = {unit for unit, state in active.items() if state in ("active", "reloading")}
    changed = [svc for svc in units if svc.unit in running and set(svc.restart_on) & ctx.changed]
    # a new command line (gunicorn's --workers, an exporter's ARGS) is read only by a restart
    restart = [svc.unit for svc in changed if any(svc.restarts_for(p) for p in ctx.changed)]
    reload = [svc.unit for svc in changed if svc.unit not in restart]
    enable = [unit for unit, state in enabled.items() if state not in ENABLED_STATES]
    start = [unit for unit in names if unit not in running]
    actions = []
    if restart:
        _systemctl("restart", *restart)
        actions.append("restarted " + ", ".join(restart))
    if reload:
        _systemctl("reload-or-restart", *reload)  # HAProxy, nginx, keepalived reload: no connection dropped
        actions.append("reloaded or restarted " + ", ".join(reload))
    if any(svc.unit == NETWORKD for svc in changed):
        # the units started next may listen on the host's address; networkd configures it asynchronously
        ip = ctx.bundle.host.ip
        try:
            wait_for(lambda: _address_present(ip), "the host's address after restarting networkd", ADDRESS_WAIT)
        except ProbeFailed as e:
            raise StepFailed(str(e), "see `networkctl status` and /etc/systemd/network/") from None
    if enable:
        # symlinks only: nothing below needs systemd to re-read them
        _systemctl("enable", "--no-reload", *enable, env={**os.environ, "SYSTEMCTL_SKIP_SYSV": "1"})
        actions.append("enabled " + ", ".join(enable))
    if start:
        _systemctl("start", *start)  # one transaction: systemd orders them by their own dependencies
        actions.append("started " + ", ".join(start))
    return Outcome("; ".join(actions) if actions else "unchanged (all enabled and running)")
