"""A command for a db host goes through the remote shell as one quoted string: arguments arrive as they were, run
as root through sudo by the admin account ssh logs in as."""

from __future__ import annotations

import contextlib
import subprocess
import types
from pathlib import Path

from kiln.db.source import SSH_OPTIONS, DbHost
from kiln.project import Project


def test_ssh_logs_in_as_the_admin_and_runs_one_command_as_root_through_sudo() -> None:
    argv = DbHost.over_ssh("db2", "10.10.0.42", "kiln").argv(["cat", "/var/lib/mysql/mariadb-bin.000001"])
    assert argv == ["ssh", *SSH_OPTIONS, "kiln@10.10.0.42", "--", "sudo -n cat /var/lib/mysql/mariadb-bin.000001"]
    assert DbHost("db2").argv(["mariadb"]) == ["mariadb"], "here: as this process, no sudo"


def test_the_runner_logs_in_as_roles_yaml_admin_user_unless_told(monkeypatch, tmp_path) -> None:
    from kiln.db import cli as db_cli

    sources: list[DbHost] = []
    monkeypatch.setattr(db_cli, "store_of", lambda settings, secrets: types.SimpleNamespace(check=lambda: None))
    monkeypatch.setattr(db_cli.SecretStore, "backup_key", lambda self: b"k" * 32)
    monkeypatch.setattr(db_cli, "archive", lambda store, source, key, workdir: sources.append(source))
    monkeypatch.setattr(db_cli, "_runner_lock", lambda project: contextlib.nullcontext())
    roles = tmp_path / "roles.yaml"
    text = (Path(__file__).parents[2] / "roles.yaml").read_text()
    text = text.replace("  db:  {database: foobar}", "  db:  {database: foobar, backup: {s3: {bucket: kiln-backups}}}")
    roles.write_text(text.replace("\nroles:\n", "\naccess: {admin_user: ops}\nroles:\n"))
    project = Project(roles=str(roles))
    assert db_cli.run(project, "archive", secrets=str(tmp_path), workdir=str(tmp_path)) == 0
    assert db_cli.run(project, "archive", secrets=str(tmp_path), workdir=str(tmp_path), ssh_user="backup-op") == 0
    assert [s.ssh[-2] for s in sources] == ["ops@10.10.0.42", "backup-op@10.10.0.42"]


def test_arguments_survive_the_remote_shell_unexpanded() -> None:
    """sh -c stands in for the shell ssh hands the command to on the host."""
    host = DbHost("db2", ssh=("sh", "-c"))
    hostile = ["a b", "$HOME", "x; touch /tmp/kiln-db-source-pwned", "'quoted'", "*"]
    out = subprocess.run(host.argv(["printf", "%s\\n", *hostile]), capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == hostile
