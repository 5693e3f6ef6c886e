"""Operator access in roles.yaml: the admin account's name and the SSH keys, per cluster and per role, as the model
reads them, the renderer puts them in each bundle, the sudoers drop-in names the account and the dashboard tells
operators to log in as it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from kiln.model import InvalidRoles, parse_roles, schema
from kiln.render import render
from kiln.roles import common

# throwaway public keys (their private halves were never kept)
ALICE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFBzeWOFzYGdjWwrAlqJAJxZqUYAJKnmcP0UEySdAc1U alice@laptop"
BOB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILDy5cVmulqLNRV6eLIRsK4+YNkELLgLJgfR4nfFVbvP bob"
CAROL = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGDaTuiA2Ed9txOWkm77OmYAabEX"
    "vV4rN7YBof4CSFjCTddbh0DGIRWRsB5gcKeRF89eA8yAjDgOBpC6soqCQjg= carol"
)


def _with_access(shipped: Path, access: str, db_access: str = "") -> str:
    text = shipped.read_text().replace("\nroles:\n", f"\n{access}\nroles:\n")
    if db_access:
        text = text.replace("db:  {database: foobar}", f"db:  {{database: foobar, access: {db_access}}}")
    return text


def test_without_an_access_section_every_host_gets_the_kiln_account_and_no_key(cluster):
    assert cluster.access.admin_user == "kiln"
    for bundle in render(cluster).bundles.values():
        assert bundle.admin is not None and (bundle.admin.name, bundle.admin.keys) == ("kiln", ())


def test_role_keys_reach_that_roles_hosts_only(shipped_roles: Path):
    text = _with_access(
        shipped_roles, f"access: {{admin_user: ops, ssh_keys: ['{ALICE}', '{BOB}']}}", f"{{ssh_keys: ['{CAROL}']}}"
    )
    cluster = parse_roles(text)
    bundles = render(cluster).bundles
    for name, bundle in bundles.items():
        assert bundle.admin is not None and bundle.admin.name == "ops"
        want = (ALICE, BOB, CAROL) if name.startswith("db") else (ALICE, BOB)
        assert bundle.admin.keys == want, name
    assert bundles["db1"].admin.authorized_keys().splitlines()[1:] == [ALICE, BOB, CAROL]
    # the role's settings are still the role's: access is the model's
    assert cluster.settings["db"].database == "foobar"


def test_sudoers_names_the_admin_account_and_passes_visudo(shipped_roles: Path, tmp_path: Path):
    cluster = parse_roles(_with_access(shipped_roles, f"access: {{admin_user: ops, ssh_keys: ['{ALICE}']}}"))
    rendered = render(cluster)
    text = rendered.content(rendered.bundles["web1"], common.SUDOERS_ADMIN)
    assert "ops ALL=(ALL:ALL) NOPASSWD: ALL" in text
    assert re.search(r"^Defaults:ops log_output, iolog_dir=/var/log/sudo-io, use_pty", text, re.M)
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    if not Path(visudo).exists():
        pytest.skip("visudo is not installed (the sudo package)")
    path = tmp_path / "60-kiln-admin"
    path.write_text(text)
    assert subprocess.run([visudo, "-cf", str(path)], capture_output=True).returncode == 0
    path.write_text(text.replace("log_output,", "log_outputs,"))  # and visudo does refuse a bad drop-in
    assert subprocess.run([visudo, "-cf", str(path)], capture_output=True).returncode != 0


@pytest.mark.parametrize(
    ("access", "path", "words"),
    [
        ("access: {admin_user: root}", "$.access.admin_user", "root's, a system account's"),
        ("access: {admin_user: mysql}", "$.access.admin_user", "daemon"),
        ("access: {admin_user: systemd-ops}", "$.access.admin_user", "system account"),
        ("access: {admin_user: Ops}", "$.access.admin_user", "not a valid account name"),
        (f"access: {{ssh_keys: ['command=\"/bin/sh\" {ALICE}']}}", "$.access.ssh_keys[0]", "not an OpenSSH"),
        (f"access: {{ssh_keys: ['ssh-rsa {ALICE.split()[1]}']}}", "$.access.ssh_keys[0]", "says ssh-rsa"),
        ("access: {ssh_keys: ['ssh-dss AAAAB3NzaC1kc3MAAACBAP']}", "$.access.ssh_keys[0]", "not an OpenSSH"),
        (f"access: {{ssh_keys: ['{ALICE}', '{ALICE[:-5]}other']}}", "$.access.ssh_keys[1]", "same key as"),
        (f'access: {{ssh_keys: ["{ALICE}\\n"]}}', "$.access.ssh_keys[0]", "line feed"),
        ("access: {ssh_keys: ['-----BEGIN OPENSSH PRIVATE KEY-----']}", "$.access.ssh_keys[0]", "private key"),
        ("access: {ssh_keys: " + ALICE + "}", "$.access.ssh_keys", "wrong type"),
        ("access: {root_login: yes}", "$.access.root_login", "unknown key"),
    ],
)
def test_unusable_access_is_refused_with_its_path(shipped_roles: Path, access: str, path: str, words: str):
    with pytest.raises(InvalidRoles) as refused:
        parse_roles(_with_access(shipped_roles, access))
    found = [p for p in refused.value.problems if p.path == path]
    assert found and any(words in p.message for p in found), refused.value
    assert all(p.line > 1 for p in found)


def test_a_roles_key_is_checked_at_its_own_path(shipped_roles: Path):
    with pytest.raises(InvalidRoles) as refused:
        parse_roles(_with_access(shipped_roles, "", f"{{ssh_keys: ['{ALICE[:40]}']}}"))
    assert [p.path for p in refused.value.problems] == ["$.roles.db.access.ssh_keys[0]"]


def test_the_schema_alone_refuses_a_trailing_newline():
    """Python's re lets `$` match before a final newline; the patterns must not (see the schema's $comment)."""
    defs = schema()["$defs"]
    for name, value in (("ssh_key", ALICE), ("account", "kiln")):
        jsonschema.validate(value, defs[name])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value + "\n", defs[name])


def test_the_dashboard_tells_operators_to_log_in_as_the_admin_account(shipped_roles: Path):
    from kiln.server.app import _alerts

    cluster = parse_roles(_with_access(shipped_roles, "access: {admin_user: ops}"))
    [alert] = _alerts(cluster.host("db2"), {"state": "failed", "last_step": "join"}, cluster.access.admin_user)
    assert alert["hint"] == "ssh ops@10.10.0.42, then sudo firstboot status"
