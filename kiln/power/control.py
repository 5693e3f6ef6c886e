"""One power action on one host: check the BMC answers (so bad credentials or an unreachable BMC change nothing),
act, then wait until the BMC reports the state the action leads to."""

from __future__ import annotations

import time
from collections.abc import Callable

from kiln.power.chassis import OFF, ON, Chassis, NotConfirmed, State, Unreachable

ACTIONS = ("on", "off", "cycle", "status")
CONFIRM_TIMEOUT = 60.0  # seconds a BMC gets to report the new state: real ones take a few, some up to 30
POLL = 0.5  # seconds between status requests while waiting


def run(
    chassis: Chassis,
    action: str,
    *,
    pxe: bool = False,
    timeout: float = CONFIRM_TIMEOUT,
    say: Callable[[str], None] = lambda line: None,
) -> State:
    """Do ACTION (one of ACTIONS) on the chassis and return the confirmed state. `pxe`: the next boot is a network
    boot (on and cycle only). Raises ValueError for an unknown action or a misplaced `pxe`, PowerError (naming the
    host) when the BMC cannot be reached, refuses the login, fails the command, or does not report the new state
    within `timeout` seconds."""
    if action not in ACTIONS:
        raise ValueError(f"unknown power action {action!r} (expected one of: {', '.join(ACTIONS)})")
    if pxe and action not in ("on", "cycle"):
        raise ValueError(f"--pxe goes with on or cycle, not {action}")
    before = chassis.status()  # before anything changes: proves the address and the login
    if action == "status":
        return before
    started = time.monotonic()
    if action == "off":
        if before == OFF:
            return OFF
        chassis.power_off()
        want = OFF
    elif action == "on":
        if before == ON and pxe:
            say(f"{chassis.host}: already on; to boot it from the network now: ./inv power {chassis.host} cycle --pxe")
        chassis.on(pxe=pxe)
        want = ON
    else:
        chassis.cycle(pxe=pxe)
        want = ON
    confirm(chassis, want, timeout)
    took = time.monotonic() - started
    say(f"{chassis.host}: {action}{' with PXE next boot' if pxe else ''}: the BMC reports {want} after {took:.1f} s")
    return want


def confirm(chassis: Chassis, want: State, timeout: float) -> None:
    """Poll the chassis until it reports `want`; NotConfirmed after `timeout` seconds. A BMC that does not answer
    one poll is asked again: one busy with the change it was just told (QEMU exiting on quit closes its socket under
    the next status) is not a failure until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = chassis.status()
        except Unreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL)
            continue
        if seen == want:
            return
        if time.monotonic() >= deadline:
            raise NotConfirmed(
                f"{chassis.host}: the BMC took the command but still reports {seen}, not {want}, after {timeout:g} s"
            )
        time.sleep(POLL)
