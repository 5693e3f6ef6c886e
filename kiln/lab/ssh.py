"""SSH to a lab host with the lab's key, as the cluster's admin account (roles.yaml access.admin_user; the lab's
server adds its key to the operators' keys), from the lab's address; host keys learned on first contact.

Root cannot log in. Every command the lab runs on a host goes through `as_root`, here and only here: `sudo -n`
(never a prompt: the account has no password, sudoers gives it NOPASSWD), so sudo logs it like an operator's.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from kiln.fsutil import write_atomic
from kiln.lab.layout import Lab
from kiln.run import run


def as_root(command: str) -> str:
    """The remote command line that runs the shell command `command` as root through sudo, never prompting."""
    return f"sudo -n sh -c {shlex.quote(command)}"


def options(lab: Lab) -> list[str]:
    return [
        "-i",
        str(lab.ssh_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={lab.known_hosts}",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
    ]


def ssh_argv(lab: Lab, address: str) -> list[str]:
    """ssh to `address` as the admin account; a command after it runs as that account (`sudo ...` for root)."""
    return ["ssh", *options(lab), f"{lab.admin_user}@{address}"]


def config_path(lab: Lab) -> Path:
    """Where config_file() writes the lab's ssh_config."""
    return lab.ssh_key.parent / "config"


def config_file(lab: Lab) -> str:
    """An ssh_config naming every host (testinfra's ssh backend reads it): `ssh -F FILE lb1`."""
    path = config_path(lab)
    blocks = []
    for h in lab.hosts:
        blocks.append(
            f"Host {h.name}\n    HostName {h.ip}\n    User {lab.admin_user}\n    IdentityFile {lab.ssh_key}\n"
            f"    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking accept-new\n"
            f"    UserKnownHostsFile {lab.known_hosts}\n    ConnectTimeout 10\n    LogLevel ERROR\n"
            # an emulated guest starved of CPU for 15 s is slow, not gone: the shared connection every test
            # command rides on (ControlMaster) is dropped only after a minute without an answer
            "    ServerAliveInterval 10\n    ServerAliveCountMax 6\n"
            f"    ControlMaster auto\n    ControlPath {lab.ssh_key.parent}/cm-%h\n    ControlPersist 120\n"
        )
    write_atomic(path, "\n".join(blocks).encode(), mode=0o600)
    return str(path)


def forget(lab: Lab, address: str) -> None:
    """Drop a host's key from the lab's known_hosts: a re-provisioned host makes new host keys."""
    if lab.known_hosts.exists():
        run(["ssh-keygen", "-R", address, "-f", str(lab.known_hosts)], check=False)
