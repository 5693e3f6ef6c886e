"""What each phase does to one host, for each role and mode. Every failure raises HostError naming the host.

Image (reinstall): [web: drain from every LB | lb: move the VIP away | db primary: switchover first] → rearm →
power cycle into PXE → wait until the server reports it joined (installed, configured, joined) → health →
[web: ready on every LB, UP].
Reboot only: drain as above → `systemctl reboot` over SSH → the host back (a new boot id) → health → ready.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kiln.model import Cluster, Host
from kiln.roll.runtime import Haproxies
from kiln.roll.state import IMAGE
from kiln.roll.steps import Phase
from kiln.roll.transport import Transport

POLL = 5.0  # seconds between two looks at a host's provisioning state or boot
REBOOT = ("sudo", "-n", "systemd-run", "--quiet", "--on-active=2s", "/bin/systemctl", "reboot")
STATUS = ("sudo", "-n", "firstboot", "status")
BOOT_ID = ("cat", "/proc/sys/kernel/random/boot_id")
REBOOT_REQUIRED = "/run/reboot-required"


class HostError(Exception):
    """A phase failed on a host; the message names it and what to look at."""


@dataclass(frozen=True)
class Timeouts:
    drain: float = 30.0  # seconds each LB waits for a server's open sessions to finish
    ready: float = 120.0  # seconds for a server back in rotation to pass its checks on each LB
    join: float = 1800.0  # seconds from the power cycle until the host reports joined
    boot: float = 600.0  # seconds for a rebooted host to answer SSH again
    vip: float = 30.0  # seconds for the VIP to leave an LB


@dataclass
class World:
    """The outside world the phases act on; the cli builds it from roles.yaml, the lab or a fleet."""

    cluster: Cluster
    transport: Transport
    haproxies: Haproxies
    rearm: Callable[[Host], None]  # ./inv reprovision HOST's work; raises HostError
    power_pxe: Callable[[Host], None]  # power cycle, next boot from the network; raises (PowerError names the host)
    host_state: Callable[[str], dict[str, Any]]  # the server's record of the host (GET /v1/hosts)
    switchover: Callable[[str], None]  # db: make this replica the primary (./inv db switchover --to)
    forget_host_key: Callable[[Host], None]  # a reinstalled host makes new SSH host keys
    timeouts: Timeouts = Timeouts()
    sleep: Callable[[float], None] = time.sleep

    def ssh(self, host: Host, argv: tuple[str, ...], what: str, timeout: float = 60.0) -> str:
        ran = self.transport.run(host, argv, timeout)
        if ran.code != 0:
            how = "cannot reach it over SSH" if ran.code == 255 else f"exit {ran.code}"
            raise HostError(f"{host.name}: {what}: {how}: {ran.tail()}")
        return ran.stdout

    def wait(self, host: Host, what: str, timeout: float, check: Callable[[], str | None]) -> None:
        """Poll CHECK (None: done; else what is still missing) every POLL seconds; HostError after `timeout`."""
        deadline = time.monotonic() + timeout
        while (missing := check()) is not None:
            if time.monotonic() >= deadline:
                raise HostError(f"{host.name}: {what} after {timeout:g} s: {missing}")
            self.sleep(POLL)


def _vip_away(w: World, lb: Host) -> None:
    """Stop keepalived on LB (it sends priority 0: a peer takes the VIP at once) and wait until a peer holds it."""
    vip = str(w.cluster.network.vip)
    peers = [h for h in w.cluster.by_role("lb") if h.name != lb.name]
    w.ssh(lb, ("sudo", "-n", "systemctl", "stop", "keepalived"), "stopping keepalived to move the VIP away")

    def moved() -> str | None:
        holders = [p.name for p in peers if f"inet {vip}/" in w.transport.run(p, ("ip", "-4", "-o", "addr"), 30).stdout]
        return None if holders else f"no other LB holds the VIP {vip}"

    w.wait(lb, "the VIP did not move to another LB", w.timeouts.vip, moved)


def _joined(w: World, host: Host) -> None:
    def check() -> str | None:
        record = w.host_state(host.name)
        state = record.get("state")
        last = record.get("last_event") or {}
        if state == "failed":
            raise HostError(
                f"{host.name}: provisioning failed at {last.get('step')}: {last.get('detail') or 'no detail'} "
                f"(ssh in and run `firstboot status`)"
            )
        return None if state == "joined" else f"still {state} ({last.get('step', 'no event yet')})"

    w.wait(host, "not joined", w.timeouts.join, check)
    w.forget_host_key(host)


def _health(w: World, host: Host) -> None:
    """The agent on the host says it is provisioned; for an LB, keepalived and haproxy run and a web server is UP."""
    w.ssh(host, STATUS, "firstboot status is not provisioned")
    if host.role == "lb":
        w.ssh(host, ("systemctl", "is-active", "keepalived", "haproxy"), "keepalived or haproxy is not active")
        up = [s for s, st in w.haproxies.status_of(host).items() if st.startswith("UP")]
        if not up:
            raise HostError(f"{host.name}: haproxy sees no web server UP")


def _boot_id(w: World, host: Host) -> str:
    return w.ssh(host, BOOT_ID, "reading the boot id").strip()


def _reboot(w: World, host: Host) -> None:
    before = _boot_id(w, host)
    w.ssh(host, REBOOT, "asking for a reboot")

    def back() -> str | None:
        try:
            ran = w.transport.run(host, BOOT_ID, 30)
        except TimeoutError:
            return "no answer over SSH yet"
        if ran.code != 0:
            return "no answer over SSH yet"
        return None if ran.stdout.strip() != before else "not rebooted yet (same boot id)"

    w.wait(host, "not back from its reboot", w.timeouts.boot, back)


def needs_reboot(w: World, host: Host) -> bool:
    """Whether HOST asks for a reboot (/run/reboot-required, which unattended-upgrades' packages leave)."""
    ran = w.transport.run(host, ("test", "-e", REBOOT_REQUIRED), 60)
    if ran.code == 255:
        raise HostError(f"{host.name}: cannot reach it over SSH to look for {REBOOT_REQUIRED}: {ran.tail()}")
    return ran.code == 0


def phases(w: World, host: Host, mode: str) -> list[Phase]:
    """HOST's phases for MODE (state.IMAGE or state.REBOOT)."""
    t = w.timeouts
    out: list[Phase] = []
    if host.role == "web":
        out.append(Phase("drain", lambda: w.haproxies.drain(host.name, t.drain)))
    elif host.role == "lb":
        out.append(Phase("vip away", lambda: _vip_away(w, host)))
    elif host.is_primary:
        replicas = [h.name for h in w.cluster.by_role("db") if not h.is_primary]
        if mode != IMAGE or not replicas:
            why = "it has no replica to hand over to" if not replicas else f"./inv db switchover --to {replicas[0]}"
            raise HostError(f"{host.name}: the db primary is not rebooted by a roll: {why} first")
        return [Phase("switchover", lambda: _handed_over(w, host, replicas[0]))]
    if mode == IMAGE:
        out += [
            Phase("rearm", lambda: w.rearm(host)),
            Phase("power", lambda: w.power_pxe(host)),
            Phase("install", lambda: _joined(w, host)),
        ]
    else:
        out.append(Phase("reboot", lambda: _reboot(w, host)))
    out.append(Phase("health", lambda: _health(w, host)))
    if host.role == "web":
        out.append(Phase("ready", lambda: w.haproxies.ready(host.name, t.ready)))
    return out


def _handed_over(w: World, primary: Host, to: str) -> None:
    """The primary is reinstalled as a replica once roles.yaml says so: switch over, then stop with what to do."""
    w.switchover(to)
    raise HostError(
        f"{primary.name}: switched over, {to} is the primary now; set db_role: primary on {to} and replica on "
        f"{primary.name} in roles.yaml, ./inv apply, then run the roll again: it reinstalls {primary.name} as a replica"
    )
