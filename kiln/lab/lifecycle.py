"""`lab up` and `lab down`: bring the namespace, dnsmasq, the server and one VM per host up, watch the hosts
join with live progress; and take everything the lab started down again, whatever state it is in."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from kiln.build import manifest
from kiln.fsutil import write_atomic
from kiln.lab import client, dnsmasq, netns, procs, server, vm
from kiln.lab.firmware import Firmware
from kiln.lab.layout import BOOT_ORDER, Lab, tap_name
from kiln.model import Host
from kiln.secrets import SecretStore
from kiln.server.states import State

TIMEOUT = 1800.0  # the whole cluster under TCG on two cores; the goal is under 10 min
# firstboot.service restarts a failed agent after 60 s (RestartSec): a host counts as failed only when it is
# still failed after that retry had time to run, so a transient failure shows but does not end `lab up`.
FAILED_GRACE = 180.0
# Hosts still booting (the server has not heard from their agent yet) at most at once: one per core. Seven
# emulated guests booting together on two cores took 640-780 s each to start their agent (2026-11-30), against
# 68 s for one alone: far more than sharing the cores explains. The others wait their turn, back tiers first.
BOOTING_PER_CORE = 1
BOOTED = frozenset({State.configuring, State.joined, State.failed, State.retired})  # the server heard the agent


class NotReady(Exception):
    """Something `lab up` needs is missing; the message says what and how to make it."""


# what `lab up` runs, and the Debian package each comes from (./inv lab installs them; a direct call may not have)
TOOLS = {
    "dnsmasq": "dnsmasq-base",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def check_tools() -> None:
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise NotReady(
            f"missing Debian packages: {' '.join(missing)} (./inv lab installs them; "
            f"or apt-get install {' '.join(missing)})"
        )


def check_images(lab: Lab, boot: str) -> None:
    for role in sorted({h.role for h in lab.hosts}):
        wanted = lab.images / role / (f"{role}.qcow2" if boot == vm.DISK else f"{role}.raw")
        if not wanted.is_file() or not (lab.images / role / "manifest.json").is_file():
            raise NotReady(f"{wanted} is not built: run ./inv build-all")
    if boot == vm.PXE:
        for name in ("vmlinuz", "initrd.img"):
            if not (lab.images / "installer" / name).is_file():
                raise NotReady(f"the PXE installer images/installer/{name} is not built: run ./inv build-all")
    if not (lab.secrets / "ca.pem").is_file() or not (lab.secrets / "signing.pub").is_file():
        raise NotReady("secrets/ is incomplete (the images bake its signing key): run ./inv keys, then build-all")
    roles_shown = str(lab.roles_file or "roles.yaml")
    expected = manifest.baked(lab.cluster, SecretStore(lab.secrets), roles_shown)
    for role in sorted({h.role for h in lab.hosts}):
        other = manifest.built_for_another(manifest.read(lab.images / role) or {}, expected)
        if other is not None:
            raise NotReady(
                f"the {role} image cannot join this cluster ({other}): run ./inv build-all --roles {roles_shown}"
            )


@dataclass
class Watch:
    """Power-on times and what /v1/hosts says, turned into a table and a verdict."""

    lab: Lab
    started: dict[str, float] = field(default_factory=dict)
    joined: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seen: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # host: (state, last step, its detail)
    failed_since: dict[str, float] = field(default_factory=dict)
    pending: list[Host] = field(default_factory=list)  # not powered on yet: waiting for a free boot slot
    boot: str = ""  # how the pending hosts boot (vm.PXE or vm.DISK)

    def booting(self) -> list[str]:
        """Hosts powered on whose agent the server has not heard from yet (booting, or installing by PXE)."""
        state = {r["name"]: r["state"] for r in self.rows}
        return [name for name in self.started if state.get(name) not in BOOTED]

    def changes(self) -> list[str]:
        """One line per host whose state or last event changed since the last call (logs, where no table redraws)."""
        lines, now = [], time.monotonic()
        for r in self.rows:
            last = r.get("last_event") or {}
            step = f"{last.get('step', '')} {last.get('status', '')}".strip()
            detail = (last.get("detail") or "")[:150]
            if self.seen.get(r["name"]) != (r["state"], step, detail):
                self.seen[r["name"]] = (r["state"], step, detail)
                seconds = now - self.started.get(r["name"], now)
                lines.append(f"[{seconds:5.0f} s] {r['name']}: {r['state']}, {step or '-'}: {detail}".rstrip(": "))
        return lines

    def update(self, rows: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        self.rows = rows
        for row in rows:
            if row["state"] == "joined" and row["name"] not in self.joined and row["name"] in self.started:
                self.joined[row["name"]] = now - self.started[row["name"]]
            if row["state"] == "failed":
                self.failed_since.setdefault(row["name"], now)
            else:
                self.failed_since.pop(row["name"], None)

    def failed(self, grace: float = FAILED_GRACE) -> list[dict[str, Any]]:
        """Hosts failed for longer than `grace` seconds: the agent's own retry did not help."""
        now = time.monotonic()
        return [r for r in self.rows if r["state"] == "failed" and now - self.failed_since[r["name"]] >= grace]

    def done(self) -> bool:
        return bool(self.rows) and all(r["state"] == "joined" for r in self.rows)

    def table(self) -> Table:
        t = Table(title="kiln lab: power-on to joined", title_justify="left")
        for col in ("host", "role", "ip", "state", "progress", "last step", "seconds"):
            t.add_column(col)
        now = time.monotonic()
        for r in self.rows:
            last = r.get("last_event") or {}
            step = f"{last.get('step', '')} {last.get('status', '')}".strip()
            seconds = self.joined.get(r["name"], now - self.started.get(r["name"], now))
            style = {"joined": "green", "failed": "red"}.get(r["state"], "")
            t.add_row(
                r["name"],
                r["role"],
                r["ip"],
                f"[{style}]{r['state']}[/]" if style else r["state"],
                f"{r['progress']}%",
                step,
                f"{seconds:.0f}",
            )
        return t


def _fresh(lab: Lab) -> None:
    for d in (lab.run, lab.disks, lab.logs):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
    lab.database.unlink(missing_ok=True)
    lab.known_hosts.unlink(missing_ok=True)
    (lab.root / "changes.json").unlink(missing_ok=True)  # day-2 changes of the lab before (kiln/lab/change.py)
    for name in ("db-events.jsonl", "db-monitor.json"):  # the failover monitor's memory of the lab before
        (lab.root / name).unlink(missing_ok=True)


def start_infrastructure(lab: Lab, console: Console) -> None:
    """Namespace, bridge, taps, dnsmasq, the server and the db failover monitor; this thread ends up inside the
    namespace."""
    _fresh(lab)
    netns.create(lab.gateway, lab.prefix, [tap_name(h) for h in lab.hosts])
    dnsmasq.start(lab)
    server.start(lab)
    server.start_db_monitor(lab)
    netns.enter()
    server.wait_ready(lab)
    console.print(
        f"namespace {netns.NETNS}: {lab.gateway}/{lab.prefix}; dnsmasq; kiln serve at {lab.server_url}/; "
        "db failover monitor"
    )


def power_on(lab: Lab, hosts: tuple[Host, ...], boot: str, watch: Watch) -> None:
    """Queue `hosts` for power-on in BOOT_ORDER (db, app, web, lb: each tier's join asks the one behind it; mon
    last) and start as many as there are free boot slots; watch_until_joined starts the rest as slots free up."""
    order = {role: i for i, role in enumerate(BOOT_ORDER)}
    watch.pending += sorted(hosts, key=lambda h: order.get(h.role, len(order)))
    watch.boot = boot
    start_pending(lab, watch)


def start_pending(lab: Lab, watch: Watch) -> list[str]:
    """Power on pending hosts while fewer than BOOTING_PER_CORE per core are booting; the names started."""
    slots = max(1, BOOTING_PER_CORE * (os.cpu_count() or 1))
    started = []
    while watch.pending and len(watch.booting()) < slots:
        host = watch.pending.pop(0)
        vm.make_disk(lab, host, watch.boot)
        vm.start(lab, host, watch.boot)
        watch.started[host.name] = time.monotonic()
        started.append(host.name)
    return started


def up(
    lab: Lab, boot: str, timeout: float = TIMEOUT, console: Console | None = None, firmware: Firmware = Firmware.BIOS
) -> int:
    """Boot every host of the lab (`boot`: vm.PXE or vm.DISK; `firmware`: what each VM boots with) and wait up to
    `timeout` s for each to join; on a running lab, apply the roles file to it (day 2). 0 when every host joined."""
    console = console or Console(width=None if sys.stdout.isatty() else 200)  # a log: whole lines, not 80 columns
    lab.check()
    try:
        check_tools()
        check_images(lab, boot)
    except NotReady as e:
        console.print(f"[red]lab up: {e}[/]")
        return 1
    if netns.exists() and procs.pid_of(server.NAME, lab.run) is not None:
        from kiln.lab.change import change  # the running lab follows the roles file: the day-2 path

        console.print("lab up: the lab is up; applying the roles file to it (./inv lab down first for a new one)")
        if firmware is not vm.firmware_of(lab):
            console.print(f"lab up: new VMs boot {vm.firmware_of(lab)} like the running lab's, not {firmware}")
        return change(lab, console, timeout=timeout)
    if netns.exists() or any(lab.run.glob("*.pid")):
        console.print("lab up: a lab is half up; taking it down first")
        down(lab, console)
    watch = Watch(lab)
    began = time.monotonic()
    try:
        start_infrastructure(lab, console)
        starting = {"boot": boot, "firmware": str(firmware), "outcome": "starting"}
        write_atomic(lab.boot_record, (json.dumps(starting) + "\n").encode())
        power_on(lab, lab.hosts, boot, watch)
        outcome = watch_until_joined(lab, watch, timeout, console)
    except BaseException:
        console.print("[red]lab up: setting up failed; taking the lab down[/]")
        down(lab, console)
        raise
    record = {
        "boot": boot,
        "firmware": str(firmware),
        "outcome": outcome,
        "cluster_seconds": round(time.monotonic() - began, 1),
        "joined_seconds": {k: round(v, 1) for k, v in watch.joined.items()},
    }
    write_atomic(lab.boot_record, (json.dumps(record, indent=2) + "\n").encode())
    if outcome == "joined":
        slowest = max(watch.joined.values())
        console.print(
            f"[green]every host joined[/]: the slowest {slowest:.0f} s after power-on "
            f"({record['cluster_seconds']:.0f} s for the whole lab up). Next: ./inv lab verify"
        )
        return 0
    for r in watch.failed(grace=0) or [r for r in watch.rows if r["state"] != "joined"]:
        last = r.get("last_event") or {}
        host = lab.cluster.host(r["name"])
        console.print(
            f"[red]{r['name']}[/]: {r['state']} at step {last.get('step', '-')} ({last.get('status', '-')}): "
            f"{last.get('detail') or 'no detail'}\n  serial log: {lab.serial_log(host)}"
            f"\n  on the host: ./inv lab ssh --host {r['name']}, then sudo firstboot status"
        )
    console.print("the lab stays up for a look; ./inv lab down removes it")
    return 1


def watch_until_joined(lab: Lab, watch: Watch, timeout: float, console: Console) -> str:
    """Poll the server until every host joined: joined, failed (past the agent's retry), timeout or vm exited."""
    deadline = time.monotonic() + timeout
    # A terminal gets a live table; a log (CI, a pipe) gets a line per change instead of one final table.
    live = Live(watch.table(), console=console, refresh_per_second=1, transient=False, auto_refresh=console.is_terminal)
    with live:
        while True:
            rows = client.try_hosts(lab)
            if rows is not None:
                watch.update(rows)
                live.update(watch.table())  # a log gets this table once, when the wait ends
                if not console.is_terminal:
                    for line in watch.changes():
                        console.print(line, highlight=False)
                for name in start_pending(lab, watch):
                    console.print(f"{name}: powered on ({len(watch.pending)} waiting for a boot slot)", highlight=False)
            if watch.done():
                return "joined"
            if watch.failed():
                return "failed"
            if time.monotonic() > deadline:
                return "timeout"
            dead = [h.name for h in lab.hosts if h.name in watch.started and not vm.running(lab, h)]
            if dead:
                console.print(f"[red]VM(s) exited: {', '.join(dead)}[/] (see state/lab/logs/<host>.qemu.log)")
                return "vm exited"
            time.sleep(2)


def boot_mode(lab: Lab) -> str:
    """How the running lab booted (pxe or disk), from its boot record."""
    try:
        return str(json.loads(lab.boot_record.read_text())["boot"])
    except (FileNotFoundError, ValueError, KeyError):
        return vm.DISK


def down(lab: Lab, console: Console | None = None) -> int:
    """Stop every process the lab started, remove the namespace (bridge and taps with it) and the disks."""
    console = console or Console()
    stopped = []
    for pidfile in sorted(lab.run.glob("*.pid")) if lab.run.is_dir() else []:
        name = pidfile.stem
        if procs.stop(name, lab.run):
            stopped.append(name)
    strays = [p for p in netns.pids() if p != os.getpid()]
    for pid in strays:
        procs.stop_pid(pid)
    removed = netns.destroy()
    for d in (lab.run, lab.disks):
        shutil.rmtree(d, ignore_errors=True)
    lab.database.unlink(missing_ok=True)
    parts = []
    if stopped:
        parts.append(f"stopped {', '.join(stopped)}")
    if strays:
        parts.append(f"killed {len(strays)} other process(es) in the namespace")
    if removed:
        parts.append(f"removed namespace {netns.NETNS}")
    console.print("lab down: " + ("; ".join(parts) if parts else "nothing was running") + f" (logs kept in {lab.logs})")
    return 0
