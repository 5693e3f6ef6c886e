"""SSH to a lab host with the lab's key (root, from the lab's address; host keys learned on first contact)."""

from __future__ import annotations

from kiln.lab.layout import Lab


def options(lab: Lab) -> list[str]:
    return [
        "-i", str(lab.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={lab.known_hosts}",
        "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def ssh_argv(lab: Lab, address: str) -> list[str]:
    return ["ssh", *options(lab), f"root@{address}"]
