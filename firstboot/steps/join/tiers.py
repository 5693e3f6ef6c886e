"""The lb and service joins: the role's daemons run in this network namespace and answer through their peers."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from firstboot.errors import StepFailed
from firstboot.nic import holds_address
from firstboot.probe import ProbeFailed, http_get, tcp_open, wait_for
from kiln.bundle import LbJoin, ServiceJoin

RETRY = "see `firstboot status` and the unit's journal; fix it, then run `firstboot run`"


def running_here(name: str) -> list[int]:
    """PIDs of processes called `name` that share this process's network namespace."""
    mine = os.readlink("/proc/self/ns/net")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() == name and os.readlink(proc / "ns/net") == mine:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


# `systemctl start` of a Type=simple unit returns once systemd forked, maybe before the daemon exec'd: on a busy
# emulated host app1's join once looked 1.5 s after the start and found no gunicorn yet.
PROCESS_WAIT = 60.0


def _require(name: str, unit: str) -> None:
    def running() -> str:
        if not running_here(name):
            raise ProbeFailed(f"no {name} process")
        return "running"

    try:
        wait_for(running, f"{name} to start", PROCESS_WAIT)
    except ProbeFailed:
        raise StepFailed(
            f"{name} is not running ({PROCESS_WAIT:.0f} s after its start)",
            f"see `systemctl status {unit}` and `journalctl -u {unit}`",
        ) from None


def _vip_state(vip: str) -> str:
    if holds_address(vip):
        return "this node holds the VIP"
    try:
        tcp_open(vip, 80, timeout=1.0)
    except ProbeFailed:
        raise ProbeFailed(f"no node answers on the VIP {vip}:80 yet") from None
    return "a peer holds the VIP"


def pool_status(stats_url: str, backend: str) -> dict[str, str]:
    status, body = http_get(stats_url + ";csv")
    if status != 200:
        raise ProbeFailed(f"GET {stats_url};csv: HTTP {status}")
    rows = csv.DictReader(io.StringIO(body.decode(errors="replace").lstrip("# ")))
    return {
        r["svname"]: r["status"]
        for r in rows
        if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")
    }


KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
PRIORITY = re.compile(r"^\s*priority\s+(\d+)", re.M)


def keepalived_priorities() -> set[int]:
    """The VRRP priorities in the configs the keepalived processes of this namespace were started with."""
    found = set()
    for pid in running_here("keepalived"):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        conf = KEEPALIVED_CONF
        for flag, value in zip(args, args[1:], strict=False):
            if flag in ("-f", "--use-file"):
                conf = value
        try:
            found |= {int(p) for p in PRIORITY.findall(Path(conf).read_text())}
        except OSError:
            continue
    return found


def join_lb(spec: LbJoin, deadline: float) -> str:
    """keepalived runs with the bundle's priority, the VIP answers somewhere, HAProxy sees a web server UP."""
    _require("keepalived", "keepalived")
    _require("haproxy", "haproxy")
    priorities = keepalived_priorities()
    if spec.priority not in priorities:
        raise StepFailed(
            f"keepalived runs with priority {', '.join(map(str, sorted(priorities))) or 'unknown'}, "
            f"the bundle says {spec.priority}",
            "restart keepalived so it reads /etc/keepalived/keepalived.conf, then run `firstboot run`",
        )
    try:
        vip = wait_for(lambda: _vip_state(spec.vip), "the VIP", deadline)
    except ProbeFailed as e:
        raise StepFailed(str(e), "check keepalived on both load balancers (journalctl -u keepalived)") from None

    def pool_up() -> str:
        servers = pool_status(spec.stats_url, "web_pool")
        up = [s for s, st in servers.items() if st.startswith("UP")]
        if not up:
            raise ProbeFailed(
                "no web server passes its health check "
                f"({', '.join(f'{s} {st}' for s, st in servers.items()) or 'empty pool'})"
            )
        return f"web pool {len(up)}/{len(servers)} UP"

    try:
        pool = wait_for(pool_up, "the web pool", deadline)
    except ProbeFailed as e:
        raise StepFailed(str(e), "check the web hosts (firstboot status there) and the lb→web firewall rules") from None
    return f"keepalived priority {spec.priority}, {vip}; haproxy {pool}"


def join_service(spec: ServiceJoin, deadline: float) -> str:
    """The role's daemon runs here and its health URL answers 200 (through the peers it depends on)."""
    _require(spec.process, spec.unit)

    def healthy() -> str:
        status, _ = http_get(spec.health_url)
        if status != 200:
            raise ProbeFailed(f"GET {spec.health_url}: HTTP {status}")
        return "200"

    try:
        wait_for(healthy, f"{spec.health_url} to answer 200", deadline)
    except ProbeFailed as e:
        raise StepFailed(str(e), RETRY) from None
    return spec.what
