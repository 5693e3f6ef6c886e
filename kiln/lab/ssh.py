"""SSH to a lab host with the lab's key (root, from the lab's address; host keys learned on first contact)."""

from __future__ import annotations

from pathlib import Path

from kiln.fsutil import write_atomic
from kiln.lab.layout import Lab
from kiln.run import run


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
    return ["ssh", *options(lab), f"root@{address}"]


def config_path(lab: Lab) -> Path:
    """Where config_file() writes the lab's ssh_config."""
    return lab.ssh_key.parent / "config"


def config_file(lab: Lab) -> str:
    """An ssh_config naming every host (testinfra's ssh backend reads it): `ssh -F FILE lb1`."""
    path = config_path(lab)
    blocks = []
    for h in lab.cluster.hosts:
        blocks.append(
            f"Host {h.name}\n    HostName {h.ip}\n    User root\n    IdentityFile {lab.ssh_key}\n"
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
