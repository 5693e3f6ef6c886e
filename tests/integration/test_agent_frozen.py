"""The frozen agent (./inv freeze, PyInstaller onedir) runs where no Python is installed: --version, offline apply."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kiln import signing
from kiln.bundle import shared_digest
from kiln.model import Cluster
from kiln.render import render
from kiln.secrets import SecretStore
from tests.integration.agent_frozen import frozen_binary, without_python
from tests.integration.test_agent_haproxy_runtime import Proxy, proxy  # noqa: F401  (the fixture, used by name)
from tests.unit.agent_support import (
    HOSTS,
    SECRETS,
    StandIn,
    bundle,
    host_public_key,
    machine,
    seed,
    tls_for_loopback,
    with_shared_hosts,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def frozen() -> Path:
    return frozen_binary()


def test_python_is_really_hidden() -> None:
    result = without_python(["sh", "-c", f"python3 -c 'print(1)' || {sys.executable} -c 'print(1)'"])
    assert result.returncode != 0 and "1" not in result.stdout


def test_frozen_version(frozen: Path) -> None:
    result = without_python([str(frozen), "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("firstboot ")


def test_frozen_offline_apply_of_a_rendered_bundle(
    frozen: Path, tmp_path: Path, cluster: Cluster, secret_store: SecretStore
) -> None:
    rendered = render(cluster)
    db1 = rendered.bundles["db1"]
    bundle = db1.with_secret_values(secret_store.values_for(db1))
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle.to_json())
    for digest in bundle.shared_digests():  # as ./inv render --out keeps them, beside the bundle
        (tmp_path / "_shared").mkdir(exist_ok=True)
        (tmp_path / "_shared" / digest).write_text(rendered.shared[digest])
    root = tmp_path / "root"
    first = without_python([str(frozen), "apply", "--bundle", str(path), "--root", str(root), "--no-services"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert (root / "etc/mysql/mariadb.conf.d/60-kiln.cnf").read_text().startswith("# Rendered by kiln for db1")
    assert (root / "etc/kiln/secrets/db_replication_password").read_text() == secret_store.value(
        "db_replication_password"
    )
    second = without_python([str(frozen), "apply", "--bundle", str(path), "--root", str(root), "--no-services"])
    assert second.returncode == 0 and second.stdout.rstrip().endswith(": unchanged")
    for s in bundle.secrets:
        assert s.value and s.value not in first.stdout + first.stderr + second.stdout + second.stderr


def test_frozen_run_enrols_signs_and_provisions(frozen: Path, tmp_path: Path) -> None:
    """The whole boot path without Python: a host key made, enrolment with the token, a signed fetch of the shared
    contents, signed events, the bundle's signature and stamps checked (cryptography and TLS frozen in)."""
    key = signing.generate_private_key()
    ca, context = tls_for_loopback(tmp_path)
    root = machine(tmp_path / "root", key, ca=ca)
    shared = {shared_digest(HOSTS): HOSTS.encode()}
    with StandIn(with_shared_hosts(bundle()), key, context, shared=shared).running() as server:
        seed(root, server.url)
        result = without_python(
            [str(frozen), "run", "--root", str(root), "--imds-endpoint", "", "--fetch-deadline", "10"]
        )
        # then converge: a newer generation polled for (signed ?after=1), verified and applied
        newer = with_shared_hosts(bundle())
        newer = replace(
            newer, files=tuple(replace(f, content="A=2\n") if f.path.endswith("app.env") else f for f in newer.files)
        )
        server.bundle, server.stamp = newer, {"generation": 2}
        converged = without_python([str(frozen), "converge", "--root", str(root), "--once"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert converged.returncode == 0, converged.stdout + converged.stderr
    assert (root / "etc/kiln/app.env").read_text() == "A=2\n"
    assert ("converge", "ok", 2) in [(e["step"], e["status"], e.get("generation")) for _, e in server.events]
    assert server.host_key == host_public_key(root)
    assert (root / "etc/hosts").read_text() == HOSTS
    assert (root / "etc/kiln/secrets/db_app_password").read_text() == SECRETS["db_app_password"]
    assert ("key", "secrets", "ok") in [(by, e["step"], e["status"]) for by, e in server.events]


def test_frozen_status_on_a_fresh_host(frozen: Path, tmp_path: Path) -> None:
    result = without_python([str(frozen), "status", "--root", str(tmp_path)])
    assert result.returncode == 4 and "not run yet" in result.stdout  # 4: not run yet (docs/agent.md)
    result = without_python([str(frozen), "status", "--root", str(tmp_path), "--json", "--wait", "--timeout", "0"])
    assert result.returncode == 4 and json.loads(result.stdout)["status"] == "not-started", result.stderr


def test_the_unit_files_ship_with_the_agent(frozen: Path) -> None:
    shipped = frozen.parent / "_internal" / "firstboot"
    converge = (shipped / "kiln-converge.service").read_text()
    assert "ExecStart=/usr/local/bin/firstboot converge" in converge
    assert "PathExists=/var/lib/firstboot/done" in (shipped / "kiln-converge.path").read_text()
    unit = (shipped / "firstboot.service").read_text()
    for line in (
        "Type=exec",
        "Restart=on-failure",
        "RemainAfterExit=yes",
        "After=network-online.target",
        "Wants=network-online.target",
        "ConditionPathExists=!/var/lib/firstboot/done",
        "ExecStart=/usr/local/bin/firstboot run",
    ):
        assert line in unit


def test_freezing_again_is_skipped_until_a_source_changes(frozen: Path, tmp_path: Path) -> None:
    import shutil
    import time

    from kiln.freeze import STAMP, freeze, up_to_date

    assert up_to_date(frozen.parent)
    started = time.monotonic()
    assert freeze(frozen.parent) == 0  # nothing changed: no PyInstaller run
    assert time.monotonic() - started < 2
    copy = tmp_path / "firstboot"
    shutil.copytree(frozen.parent, copy, symlinks=True)
    (copy / STAMP).write_text("0" * 64 + "\n")  # as if firstboot/ had changed since
    assert not up_to_date(copy)


def test_frozen_haproxy_drains_and_readies_a_server_on_a_real_haproxy(frozen: Path, proxy: Proxy) -> None:  # noqa: F811
    """The subcommand ./inv roll runs on every LB, as the images run it: the frozen agent, no Python on the host,
    against a real HAProxy's admin socket (tests/integration/test_agent_haproxy_runtime.py has the behaviour)."""

    def agent(*args: str) -> subprocess.CompletedProcess[str]:
        return without_python([str(frozen), "haproxy", *args, "--socket", str(proxy.sock)])

    shown = agent("show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert {s["name"] for s in json.loads(shown.stdout) if s["backend"] == "web_pool"} == {"web1", "web2"}
    drained = agent("drain", "web1", "--timeout", "20")
    assert drained.returncode == 0, drained.stderr
    assert proxy.status("web1")["status"] == "MAINT"
    assert {proxy.get("/") for _ in range(4)} == {"web2"}
    ready = agent("ready", "web1", "--timeout", "20")
    assert ready.returncode == 0, ready.stderr
    assert str(proxy.status("web1")["status"]).startswith("UP")
    unknown = agent("drain", "web9")
    assert unknown.returncode == 1 and "web9: HAProxy has no server web_pool/web9" in unknown.stderr
