"""`lab up --roles PATH` on a running lab: the day-2 change as an operator makes it, measured.

The roles file is applied to the lab's server (kiln/apply.py: checked, published, removed hosts drained first);
the hosts it gained get a tap, a DHCP lease and a VM, booted the way the lab booted, and join; the VMs of hosts it
lost are powered off once they are retired. Hosts it keeps are left alone: they converge to the new generation.
All the while a request loop and a write loop go through the VIP (kiln/lab/chaos.py's Loops).

What was measured goes to state/lab/changes.json, one entry per change (bench/lab.py reports them): seconds from
each publication until every running host ran it, from power-on until each new host joined, from a new web
host's join until HAProxy on every LB has it UP, from a new app host's join until it answered through the VIP;
failed requests and lost writes during the change.
"""

from __future__ import annotations

import json
import operator
import time
from functools import partial
from typing import Any

from rich.console import Console
from rich.markup import escape

from kiln.apply import NotPublished, apply_roles
from kiln.fsutil import write_atomic
from kiln.lab import alerts, dnsmasq, lifecycle, netns, procs
from kiln.lab.chaos import Loops, ssh, wait, web_status
from kiln.lab.layout import PROJECT, Lab, tap_name
from kiln.lab.ssh import config_file
from kiln.lab.vipwatch import VipWatch
from kiln.model import Host
from kiln.operator import Server, ServerError
from kiln.run import CommandError
from kiln.secrets import SecretStore

# The reference day-2 drill (the e2e lab test and bench/lab.py): these two hosts added, then web2 and app1 removed.
SCALE_OUT = (
    '  - {name: web3, role: web, mac: "52:54:00:10:00:23", ip: 10.10.0.23, bmc: {driver: lab}}',
    '  - {name: app2, role: app, mac: "52:54:00:10:00:32", ip: 10.10.0.32, bmc: {driver: lab}}',
)
SCALE_IN = ("web2", "app1")
TRAFFIC_TIMEOUT = 180.0  # seconds after a new host joined for it to get traffic (goal: 60 under emulation)
SETTLE = 5.0  # seconds the loops run after the change, so a late failure still counts


def roles_with(text: str, *, add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> str:
    """roles.yaml text with host lines added before its first db host and the hosts named in `drop` removed."""
    lines = [line for line in text.splitlines(keepends=True) if not any(f"name: {n}," in line for n in drop)]
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("- {name:") and "role: db" in line)
    return "".join(lines[:at] + [f"{line}\n" for line in add] + lines[at:])


def running_vms(lab: Lab) -> set[str]:
    """Names of the hosts whose VMs run now."""
    names = set()
    for pidfile in lab.run.glob("vm-*.pid"):
        name = pidfile.stem.removeprefix("vm-")
        if procs.pid_of(pidfile.stem, lab.run) is not None:
            names.add(name)
    return names


def _add_taps(hosts: list[Host]) -> None:
    for host in hosts:
        tap = tap_name(host)
        if tap not in netns.ip("-o", "link", "show", check=False):
            netns.add_tap(tap)


def _restart_dnsmasq(lab: Lab) -> None:
    """dnsmasq reads its static leases at start: a new host needs its lease before it asks."""
    procs.stop(dnsmasq.NAME, lab.run)
    dnsmasq.start(lab)


def change(lab: Lab, console: Console, *, timeout: float) -> int:
    """Apply the lab's roles file to the running lab; 0 when every host runs it and no request failed."""
    text = (lab.roles_file or PROJECT / "roles.yaml").read_text()
    boot = lifecycle.boot_mode(lab)
    running = running_vms(lab)
    new = [h for h in lab.hosts if h.name not in running]
    try:
        lifecycle.check_tools()
        lifecycle.check_images(lab, boot)
    except lifecycle.NotReady as e:
        console.print(f"[red]lab up: {e}[/]")
        return 1
    netns.enter()
    loops = Loops(lab)
    loops.start()
    vips = VipWatch.of(h for h in lab.cluster.by_role("lb") if h.name in running)
    vips.start()  # a VIP that moves during the change shows in its record (a request hung on the old holder)
    began = time.monotonic()
    record: dict[str, Any] = {"boot": boot, "added": [h.name for h in new]}

    def say(line: str) -> None:  # with the time since the change began: a failed request (below) is placed by it
        console.print(f"[dim]{time.monotonic() - began:6.1f} s[/] {line}")

    try:
        server = Server.of(lab.cluster, lab.secrets, lab.server_url)
        applied = apply_roles(server, text, SecretStore(lab.secrets), timeout=timeout, say=say)
    except (NotPublished, ServerError) as e:
        console.print(f"[red]lab up: {e}[/]")
        loops.stop.set()
        vips.stop()
        return 1
    record.update(
        generations=applied.generations,
        converged_seconds=applied.converged_seconds,
        host_seconds=applied.host_seconds,
    )
    gone = sorted(running - lab.cluster.names)
    for name in gone:  # retired: their credentials are revoked, their peers no longer send them anything
        procs.stop(f"vm-{name}", lab.run, grace=10)
        say(f"powered off {name} (retired)")
    record["removed"] = gone
    outcome = "joined"
    if new:
        _add_taps(new)
        _restart_dnsmasq(lab)
        watch = lifecycle.Watch(lab)
        lifecycle.power_on(lab, tuple(new), boot, watch)
        outcome = lifecycle.watch_until_joined(lab, watch, timeout, console)
        record["joined_seconds"] = {k: round(v, 1) for k, v in watch.joined.items() if k in record["added"]}
        if outcome == "joined":
            try:
                record["traffic_seconds"] = _traffic(lab, new, loops, console)
            except TimeoutError as e:
                console.print(f"[red]lab up: {e}[/]")
                outcome = "no traffic"
    time.sleep(SETTLE)
    loops.stop.set()
    vips.stop()
    ended = time.monotonic()
    loops.settle(ended)  # a request still in flight counts once it has its answer or its failure
    console.print(f"the VIP's holders: {vips.said(began)}")
    _, failed, total = loops.failed_seconds(began, ended)
    failures = loops.failed_requests(began, ended)
    for line in failures:
        console.print(f"[red]failed request[/] {escape(line)}")
    if failures:
        record["nginx_errors"] = _nginx_errors(lab, console)
    record["alerts_about_added"] = _alerts_about(lab, new, ended - began, console)
    slowest, sent = loops.slowest(began, ended)
    console.print(f"slowest answer: {slowest:.1f} s (sent +{sent:.1f} s)")
    record.update(
        failures=failures,
        outcome=outcome,
        seconds=round(time.monotonic() - began, 1),
        requests=total,
        failed_requests=failed,
        slowest_answer_seconds=round(slowest, 1),
        vip_holders=[[round(t - began, 1), list(h)] for t, h in vips.moves],
        writes=len(loops.written),
        served_by=sorted(loops.served_by),
    )
    _remember(lab, record)
    console.print(
        f"lab change: {outcome}; generations {applied.generations}; {failed}/{total} requests failed during the "
        f"change; {len(loops.written)} notes written"
    )
    return 0 if outcome == "joined" and failed == 0 else 1


def _traffic(lab: Lab, new: list[Host], loops: Loops, console: Console) -> dict[str, float]:
    """Seconds after the new hosts joined until each takes part: a web host UP on every LB's HAProxy, an app host
    answering requests through the VIP."""
    lbs = [h.name for h in lab.cluster.by_role("lb")]

    def web_up(name: str) -> bool:
        return all(web_status(lab, lb, name) == "UP" for lb in lbs)

    seconds = {}
    for host in new:
        if host.role == "web":
            took = wait(
                f"HAProxy on {', '.join(lbs)} has {host.name} UP", partial(web_up, host.name), TRAFFIC_TIMEOUT, 0.5
            )
        elif host.role == "app":
            took = wait(
                f"{host.name} answers through the VIP",
                partial(operator.contains, loops.served_by, host.name),
                TRAFFIC_TIMEOUT,
                0.5,
            )
        else:
            continue
        seconds[host.name] = round(took, 1)
        console.print(f"{host.name} takes traffic {took:.0f} s after the new hosts joined")
    return seconds


def _alerts_about(lab: Lab, new: list[Host], seconds: float, console: Console) -> list[str]:
    """What the mon host's Prometheus fired about the added hosts during the change: nothing, when the alerts wait
    for a host to join (kiln/monitoring/rules/kiln.rules.yml); ["not asked: ..."] when Prometheus did not answer."""
    try:
        fired = alerts.fired_about(lab, {h.name for h in new}, seconds)
    except (OSError, ValueError, KeyError) as e:
        fired = [f"not asked: {e}"]
    if fired:
        console.print(f"[yellow]alerts about the added hosts during the change:[/] {escape(', '.join(fired))}")
    return fired


NGINX_ERROR_LINES = 20  # the last lines of each web host's error log shown after a failed request


def _nginx_errors(lab: Lab, console: Console) -> dict[str, list[str]]:
    """The last lines of /var/log/nginx/error.log on each web host: a 502 says only that nginx gave up on the app
    pool; its error log says which upstream failed and how (refused, timed out, closed early)."""
    config_file(lab)
    said: dict[str, list[str]] = {}
    for host in lab.cluster.by_role("web"):
        try:
            text = ssh(lab, host.name, f"tail -n {NGINX_ERROR_LINES} /var/log/nginx/error.log", timeout=30)
        except CommandError as e:
            text = f"(not read: {e})"
        said[host.name] = text.splitlines()
        for line in said[host.name]:
            console.print(f"[dim]{host.name} nginx:[/] {escape(line)}")
    return said


def _remember(lab: Lab, record: dict[str, Any]) -> None:
    path = lab.root / "changes.json"
    try:
        history = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        history = []
    history.append(record)
    write_atomic(path, (json.dumps(history, indent=2) + "\n").encode())
