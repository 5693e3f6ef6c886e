"""The lb, web and app joins: the role's daemons run in this network namespace and answer through their peers."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

from firstboot.errors import StepFailed
from firstboot.nic import holds_address
from firstboot.probe import ProbeFailed, http_get, tcp_open, wait_for

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


def join_lb(params: dict[str, Any], deadline: float) -> str:
    _require("keepalived", "keepalived")
    _require("haproxy", "haproxy")
    priorities = keepalived_priorities()
    if int(params["priority"]) not in priorities:
        raise StepFailed(
            f"keepalived runs with priority {', '.join(map(str, sorted(priorities))) or 'unknown'}, "
            f"the bundle says {params['priority']}",
            "restart keepalived so it reads /etc/keepalived/keepalived.conf, then run `firstboot run`",
        )
    try:
        vip = wait_for(lambda: _vip_state(str(params["vip"])), "the VIP", deadline)
    except ProbeFailed as e:
        raise StepFailed(str(e), "check keepalived on both load balancers (journalctl -u keepalived)") from None

    def pool_up() -> str:
        servers = pool_status(str(params["stats_url"]), "web_pool")
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
    return f"keepalived priority {params['priority']}, {vip}; haproxy {pool}"


def _health(url: str, what: str, deadline: float) -> str:
    def ok() -> str:
        status, _ = http_get(url)
        if status != 200:
            raise ProbeFailed(f"GET {url}: HTTP {status}")
        return "200"

    try:
        return wait_for(ok, what, deadline)
    except ProbeFailed as e:
        raise StepFailed(str(e), RETRY) from None


def join_web(params: dict[str, Any], deadline: float) -> str:
    _require("nginx", "nginx")
    _health(str(params["health_url"]), "the app pool through nginx", deadline)
    return f"nginx answers /health through the app pool ({', '.join(params['app_pool'])})"


def join_app(params: dict[str, Any], deadline: float) -> str:
    _require("gunicorn", "kiln-app")
    _health(str(params["health_url"]), "the app with its database", deadline)
    return f"app healthy with its database {params['db_host']}:{params['db_port']}"
