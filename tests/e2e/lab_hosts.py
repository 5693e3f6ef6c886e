"""The lab's hosts as testinfra hosts, each command run as root in one kept shell per host (kiln.lab.ssh.RootShell):
the account's `sudo -n sh` once per host instead of an ssh session and a sudo per command (3.1 s a command on an
emulated host; 0.4 s in the kept shell). sudo logs and records the shell as it would an operator's `sudo -s`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import testinfra.host
from testinfra.backend.base import BaseBackend, CommandResult

from kiln.lab.ssh import RootShell


class RootShellBackend(BaseBackend):
    """testinfra's backend interface over a RootShell: commands arrive already as root (no sudo wrapper)."""

    NAME = "kiln-root-shell"

    def __init__(self, name: str, shell: RootShell) -> None:
        super().__init__(name)
        self.shell = shell

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        command = self.get_command(command, *args)
        rc, out, err = self.shell.run(command)
        return self.result(rc, self.encode(command), out, err)


def root_hosts(ssh_config: str, names: Iterable[str]) -> dict[str, testinfra.host.Host]:
    """`{name: testinfra host}` for `names` as `ssh -F ssh_config NAME` reaches them; close each backend's shell
    (`host.backend.shell.close()`) when done."""
    return {
        name: testinfra.host.Host(RootShellBackend(name, RootShell(["ssh", "-F", ssh_config, name]))) for name in names
    }
