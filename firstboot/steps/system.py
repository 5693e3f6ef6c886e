"""The firewall and services steps: they touch the running system, so they only run live on the host."""

from __future__ import annotations

from firstboot.errors import StepFailed
from firstboot.steps.context import Outcome, StepContext
from kiln.run import CommandError, run

NFT_CONF = "/etc/nftables.conf"
UNIT_DIRS = ("/etc/systemd/system/", "/lib/systemd/system/")


def firewall(ctx: StepContext) -> Outcome:
    """Check then load /etc/nftables.conf (persisted by that file and nftables.service); skip when already loaded.

    Live, it loads into the network namespace the agent runs in, whatever the root (tests use their own namespaces).
    """
    if not ctx.live:
        return Outcome("skipped (offline)")
    conf = ctx.paths.under(NFT_CONF)
    loaded = run(["nft", "list", "table", "inet", "filter"], check=False).returncode == 0
    if loaded and NFT_CONF not in ctx.changed:
        return Outcome("unchanged (ruleset loaded)")
    try:
        run(["nft", "-c", "-f", conf])
        run(["nft", "-f", conf])
    except CommandError as e:
        raise StepFailed(
            f"nftables: {e}", f"fix {NFT_CONF} (render it with ./inv render and check with nft -c -f)"
        ) from None
    return Outcome("ruleset loaded", (NFT_CONF,))


def _systemctl(*args: str) -> str:
    try:
        return run(["systemctl", *args]).stdout.strip()
    except CommandError as e:
        raise StepFailed(f"systemd: {e}", "see `journalctl -u UNIT` for the unit named above") from None


def services(ctx: StepContext) -> Outcome:
    """Enable and start each service; restart (or reload) one whose files changed. Offline: skipped."""
    if not ctx.live or not ctx.paths.is_host:
        return Outcome("skipped (offline)")
    actions = []
    if any(p.startswith(UNIT_DIRS) for p in ctx.changed):
        _systemctl("daemon-reload")
    for svc in ctx.bundle.get("services", []):
        unit = svc["unit"]
        if svc.get("enable") and run(["systemctl", "is-enabled", "--quiet", unit], check=False).returncode != 0:
            _systemctl("enable", unit)
            actions.append(f"enabled {unit}")
        if run(["systemctl", "is-active", "--quiet", unit], check=False).returncode != 0:
            _systemctl("start", unit)
            actions.append(f"started {unit}")
        elif set(svc.get("restart_on", [])) & ctx.changed:
            _systemctl("reload-or-restart", unit)
            actions.append(f"restarted {unit}")
    return Outcome("; ".join(actions) if actions else "unchanged (all enabled and running)")
