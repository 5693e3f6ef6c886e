"""The db host a backup is taken from, as the backup runner reaches it: commands over ssh as the cluster's admin
account, each through `sudo -n` (the lab, a site), or run here (the tests, or a runner on the db host itself). SQL
goes in on stdin to the `mariadb` client as root by unix socket; nothing on the host needs a password or the
store's credentials. sudo logs each command; it does not record the output of mariadb-backup and cat (the
backup and binlog streams: kiln/render/templates/sudoers-admin.j2).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from firstboot.steps.join.sql import parse_vertical
from kiln.run import CommandError, run

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR")
SUDO = ("sudo", "-n")  # root's commands from the admin account, never a password prompt


class SourceError(Exception):
    pass


@dataclass(frozen=True)
class DbHost:
    """name: the host's name in roles.yaml. ssh: the argv that runs one command there (() = run it here); sudo:
    what each command starts with there to run as root. client: options for the mariadb client (e.g.
    --socket=...); backup: options mariadb-backup starts with (e.g. --defaults-file=..., which must come first)."""

    name: str
    ssh: tuple[str, ...] = ()
    client: tuple[str, ...] = ()
    backup: tuple[str, ...] = ()
    sudo: tuple[str, ...] = ()

    @classmethod
    def over_ssh(cls, name: str, address: str, user: str, options: Sequence[str] = SSH_OPTIONS) -> DbHost:
        """The host reached with `ssh USER@ADDRESS`, USER the admin account (roles.yaml access.admin_user)."""
        return cls(name, ssh=("ssh", *options, f"{user}@{address}", "--"), sudo=SUDO)

    def argv(self, command: Sequence[str]) -> list[str]:
        """The argv that runs `command` on the host as root (quoted once for the remote shell)."""
        command = [*self.sudo, *command]
        return [*self.ssh, shlex.join(command)] if self.ssh else command

    def sql(self, statements: str, *, timeout: float = 600.0) -> list[list[str]]:
        """Run `statements` as root; the rows of their result sets (tab-separated fields)."""
        argv = self.argv(["mariadb", *self.client, "--batch", "--skip-column-names", "--raw"])
        try:
            out = run(argv, input=statements, timeout=timeout).stdout
        except CommandError as e:
            last = e.output.strip().splitlines()[-1] if e.output.strip() else str(e)
            raise SourceError(f"{self.name}: {last}") from None
        return [line.split("\t") for line in out.splitlines() if line]

    def value(self, statement: str) -> str:
        rows = self.sql(statement)
        return rows[0][0] if rows and rows[0] else ""

    def slave_status(self) -> dict[str, str]:
        """SHOW SLAVE STATUS as a dict; empty when the host replicates from nobody."""
        argv = self.argv(["mariadb", *self.client, "--batch", "--raw", "--vertical"])
        try:
            out = run(argv, input="SHOW SLAVE STATUS", timeout=60).stdout
        except CommandError as e:
            raise SourceError(f"{self.name}: {e}") from None
        return parse_vertical(out)
