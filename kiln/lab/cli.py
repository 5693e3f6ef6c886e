"""The bodies of `./inv lab ACTION`: each loads roles.yaml, does its action and returns an exit code."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.table import Table

from kiln.lab import client, lifecycle, netns, vm
from kiln.lab.firmware import Firmware
from kiln.lab.firmware import check as check_firmware
from kiln.lab.layout import Lab
from kiln.project import Project

ACTIONS = ("up", "status", "verify", "audit", "chaos", "roll", "failover", "down", "ssh")


def lab_of(project: Project) -> Lab | None:
    """The lab of the project's cluster file, parsed once; None after printing its problems."""
    cluster = project.load_or_report()
    if cluster is None:
        return None
    return Lab(cluster, roles_file=project.roles_path.resolve() if project.roles else None)


def up(lab: Lab, *, boot: str, timeout: float, firmware: str = Firmware.BIOS) -> int:
    if boot not in (vm.PXE, vm.DISK):
        print(f"lab up: --boot {boot!r}: expected pxe or disk", file=sys.stderr)
        return 1
    if firmware not in tuple(Firmware):
        print(f"lab up: --firmware {firmware!r}: expected {', '.join(Firmware)}", file=sys.stderr)
        return 1
    try:
        check_firmware(Firmware(firmware))
    except FileNotFoundError as e:
        print(f"lab up: {e}", file=sys.stderr)
        return 1
    return lifecycle.up(lab, boot, timeout, firmware=Firmware(firmware))


def status(lab: Lab) -> int:
    if not netns.exists():
        print("the lab is down (no namespace kiln-lab); ./inv lab up starts it")
        return 1
    netns.enter()
    rows = client.try_hosts(lab)
    if rows is None:
        print(f"the provisioning server does not answer at {lab.server_url}; see {lab.logs / 'server.log'}")
        return 1
    table = Table(title=f"kiln lab: {lab.cluster.name} (server {lab.server_url}/)", title_justify="left")
    for col in ("host", "role", "ip", "state", "progress", "last step", "detail", "vm"):
        table.add_column(col)
    for r in rows:
        last = r.get("last_event") or {}
        host = lab.cluster.host(r["name"])
        table.add_row(
            r["name"],
            r["role"],
            r["ip"],
            r["state"],
            f"{r['progress']}%",
            f"{last.get('step', '')} {last.get('status', '')}".strip(),
            (last.get("detail") or "")[:60],
            "running" if vm.running(lab, host) else "off",
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0 if all(r["state"] == "joined" for r in rows) else 2


def ssh(lab: Lab, *, host: str | None, command: str = "") -> int:
    """A shell on `host` as the admin account, or `command` run there as that account (`sudo ...` for root)."""
    if not host:
        print("lab ssh: which host? e.g. ./inv lab ssh --host lb1", file=sys.stderr)
        return 1
    try:
        target = lab.cluster.host(host)
    except KeyError:
        print(f"lab ssh: no host {host!r} in roles.yaml", file=sys.stderr)
        return 1
    from kiln.lab.ssh import ssh_argv

    argv = ["ip", "netns", "exec", netns.NETNS, *ssh_argv(lab, str(target.ip)), *([command] if command else [])]
    os.execvp(argv[0], argv)
    return 1  # not reached


def run(
    project: Project,
    *,
    action: str,
    host: str | None,
    boot: str,
    timeout: float,
    command: str = "",
    checks: str = "",
    firmware: str = Firmware.BIOS,
) -> int:
    lab = lab_of(project)
    if lab is None:
        return 1
    if action == "up":
        return up(lab, boot=boot, timeout=timeout, firmware=firmware)
    if action == "down":
        return lifecycle.down(lab)
    if action == "status":
        return status(lab)
    if action == "ssh":
        return ssh(lab, host=host, command=command)
    if action == "verify":
        from kiln.lab.verify import verify

        return verify(lab, checks=checks)
    if action == "chaos":
        from kiln.lab.chaos import chaos

        return chaos(lab)
    if action == "roll":
        from kiln.lab.rolldrill import rolls

        return rolls(lab, project)
    if action == "failover":
        from kiln.lab.failover import failover

        return failover(lab)
    if action == "audit":
        from kiln.lab.audit import audit

        return audit(lab, only=host or "")
    print(f"lab: unknown action {action!r} (expected one of: {', '.join(ACTIONS)})", file=sys.stderr)
    return 2
