"""The lab's network namespace: a bridge holding the cluster gateway address, one tap per VM.

Everything is created with `ip -n`, so this process stays where it is; `enter()` moves the calling
thread into the namespace (setns) for the parts that talk to the cluster (status, verify, chaos).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from kiln.lab.layout import BRIDGE, NETNS, OUTSIDE
from kiln.run import CommandError, run

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def exists(name: str = NETNS) -> bool:
    return (NETNS_DIR / name).exists()


def ip(*args: str, check: bool = True) -> str:
    return run(["ip", "-n", NETNS, *args], check=check).stdout


def create(gateway: str, prefix: int, taps: list[str]) -> None:
    """The namespace, its loopback, the bridge with the gateway and "outside" addresses, and the taps."""
    run(["ip", "netns", "add", NETNS])
    ip("link", "set", "lo", "up")
    ip("link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    ip("addr", "add", f"{gateway}/{prefix}", "dev", BRIDGE)
    ip("addr", "add", f"{OUTSIDE}/32", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    for tap in taps:
        add_tap(tap)


def add_tap(tap: str) -> None:
    """A VM's tap on the bridge (`lab up` on a running lab adds those of the hosts roles.yaml gained)."""
    ip("tuntap", "add", "dev", tap, "mode", "tap")
    ip("link", "set", tap, "master", BRIDGE)
    ip("link", "set", tap, "up")


def destroy() -> bool:
    """Delete the namespace (its bridge and taps go with it); False when there was none."""
    if not exists():
        return False
    try:
        run(["ip", "netns", "del", NETNS])
    except CommandError:
        if exists():
            raise
    return True


def pids() -> list[int]:
    """Every process whose network namespace is the lab's."""
    if not exists():
        return []
    out = run(["ip", "netns", "pids", NETNS], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def enter() -> None:
    """Move the calling thread (and what it starts afterwards) into the lab's namespace."""
    if not exists():
        raise RuntimeError("the lab is not up (no network namespace kiln-lab): run ./inv lab up")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / NETNS, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {NETNS}: {os.strerror(err)}")
    finally:
        os.close(fd)
