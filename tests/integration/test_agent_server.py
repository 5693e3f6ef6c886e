"""`firstboot run` against the real provisioning server over HTTPS (cluster CA pinned), in a fake machine root.

Under a root other than / the agent touches nothing of the running system: it fetches, verifies,
writes files and secrets, skips firewall, services, join and checks, and reports every step.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln import signing
from tests.integration.kiln_server import RunningServer, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with running_server(tmp_path_factory.mktemp("kiln-agt-serve")) as s:
        yield s


def machine(root: Path, server: RunningServer, mac: str, host: str, *, key: bytes | None = None) -> Path:
    (root / "sys/class/net/eth0").mkdir(parents=True)
    (root / "sys/class/net/eth0/address").write_text(mac + "\n")
    (root / "etc/kiln").mkdir(parents=True)
    (root / "etc/kiln/signing.pub").write_bytes(key or server.secrets.signing_pub.read_bytes())
    (root / "etc/kiln/ca.pem").write_bytes(server.secrets.ca_pem.read_bytes())
    (root / "etc/kiln/seed.json").write_text(json.dumps({"url": server.tls_url, "host": host, "mac": mac}))
    return root


def firstboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firstboot", *args], capture_output=True, text=True, timeout=120, check=False
    )


def host_view(server: RunningServer, name: str) -> dict:
    with server.client() as c:
        return next(h for h in c.get(f"{server.tls_url}/v1/hosts").json()["hosts"] if h["name"] == name)


def test_a_host_provisions_from_the_server_and_reports_every_step(server: RunningServer, tmp_path: Path) -> None:
    root = machine(tmp_path / "db2", server, "52:54:00:10:00:42", "db2")
    result = firstboot("run", "--root", str(root), "--imds-endpoint", "", "--fetch-deadline", "30")
    assert result.returncode == 0, result.stderr
    for name in ("db_app_password", "db_replication_password", "db_admin_password"):
        path = root / "etc/kiln/secrets" / name
        assert path.read_text() == server.secrets.value(name)
        assert path.stat().st_mode & 0o777 == 0o600
    assert "read_only = ON" in (root / "etc/mysql/mariadb.conf.d/60-kiln.cnf").read_text()
    status = firstboot("status", "--root", str(root))
    assert status.returncode == 0 and "provisioned: db2" in status.stdout
    view = host_view(server, "db2")
    assert view["state"] == "joined", view
    for value in (server.secrets.value("db_admin_password"), server.secrets.value("db_app_password")):
        assert value not in result.stderr + status.stdout + (root / "var/lib/firstboot/state.json").read_text()
    # a done host: nothing to do, at once
    started = time.monotonic()
    again = firstboot("run", "--root", str(root))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert time.monotonic() - started < 5


def test_secrets_handed_out_already_fail_clearly(server: RunningServer, tmp_path: Path) -> None:
    with server.client() as c:  # app1's secrets are fetched once by someone else first
        assert c.get(f"{server.tls_url}/v1/bundle", params={"mac": "52:54:00:10:00:31"}).status_code == 200
    root = machine(tmp_path / "app1", server, "52:54:00:10:00:31", "app1")
    result = firstboot("run", "--root", str(root), "--imds-endpoint", "", "--fetch-deadline", "30")
    assert result.returncode == 1
    status = firstboot("status", "--root", str(root))
    assert status.returncode == 1
    assert "FAILED at step secrets" in status.stdout
    assert "re-arm the host with ./inv reprovision HOST" in status.stdout
    assert not (root / "etc/kiln/secrets/db_app_password").exists()
    assert host_view(server, "app1")["state"] == "failed"


def test_a_bundle_signed_by_another_key_is_refused_and_nothing_applied(server: RunningServer, tmp_path: Path) -> None:
    other = signing.public_key_pem(signing.generate_private_key().public_key())
    root = machine(tmp_path / "web1", server, "52:54:00:10:00:21", "web1", key=other)
    result = firstboot("run", "--root", str(root), "--imds-endpoint", "", "--fetch-deadline", "30")
    assert result.returncode == 1
    assert "bundle refused" in result.stderr
    assert not (root / "etc/nginx").exists() and not (root / "etc/hostname").exists()
    status = firstboot("status", "--root", str(root))
    assert "FAILED at step fetch" in status.stdout and "signing key" in status.stdout
    assert host_view(server, "web1")["state"] == "failed"


def test_an_unreachable_server_is_retried_until_the_deadline(server: RunningServer, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = machine(tmp_path / "web2", server, "52:54:00:10:00:22", "web2")
    (root / "etc/kiln/seed.json").write_text(json.dumps({"url": f"https://127.0.0.1:{port}", "host": "web2"}))
    started = time.monotonic()
    result = firstboot("run", "--root", str(root), "--imds-endpoint", "", "--fetch-deadline", "2")
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert result.stderr.count("retrying in") >= 2 and "Connection refused" in result.stderr
    assert "no bundle within 2s" in firstboot("status", "--root", str(root)).stdout
    assert list((root / "var/lib/firstboot/events").iterdir())  # queued: the server was never reached
