"""A command for a db host goes through the remote shell as one quoted string: arguments arrive as they were."""

from __future__ import annotations

import subprocess

from kiln.db.source import SSH_OPTIONS, DbHost


def test_ssh_runs_one_command_as_root_on_the_host() -> None:
    argv = DbHost.over_ssh("db2", "10.10.0.42").argv(["cat", "/var/lib/mysql/mariadb-bin.000001"])
    assert argv == ["ssh", *SSH_OPTIONS, "root@10.10.0.42", "--", "cat /var/lib/mysql/mariadb-bin.000001"]


def test_arguments_survive_the_remote_shell_unexpanded() -> None:
    """sh -c stands in for the shell ssh hands the command to on the host."""
    host = DbHost("db2", ssh=("sh", "-c"))
    hostile = ["a b", "$HOME", "x; touch /tmp/kiln-db-source-pwned", "'quoted'", "*"]
    out = subprocess.run(host.argv(["printf", "%s\\n", *hostile]), capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == hostile
