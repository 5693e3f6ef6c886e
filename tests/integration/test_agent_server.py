"""`firstboot run` against the real provisioning server over HTTPS (cluster CA pinned), in a fake machine root.

Each host is armed by the server with a one-time enrolment token; the test reads it as the operator does
(GET /v1/hosts/NAME/seed) and writes it into the machine's seed, as the PXE installer would. Under a root other
than / the agent touches nothing of the running system: it enrols, fetches, verifies, writes files and secrets,
skips firewall, services, join and checks, and reports every step.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firstboot.credential import Credential
from firstboot.paths import Paths
from firstboot.report import EventQueue, Reporter
from kiln import hostauth, signing
from kiln.bundle import Bundle, File
from tests.integration.agent_proxy import LossyProxy
from tests.integration.kiln_server import RunningServer, running_server
from tests.unit.agent_support import CLUSTER_ID, SECRETS, StandIn, bundle, tls_for_loopback
from tests.unit.agent_support import machine as standin_machine
from tests.unit.agent_support import seed as standin_seed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("kiln-agt-serve")) as s:
        yield s


def operator(server: RunningServer) -> httpx.Client:
    return server.client(headers={"Authorization": f"Bearer {server.secrets.operator_token()}"})


def armed_seed(server: RunningServer, host: str) -> dict[str, str]:
    """What the operator reads for an armed host (its enrolment token), pointed at the test server's port."""
    with operator(server) as c:
        answer = c.get(f"{server.tls_url}/v1/hosts/{host}/seed")
    assert answer.status_code == 200, answer.text
    return {**answer.json(), "url": server.tls_url}


def machine(root: Path, server: RunningServer, seed: dict[str, str], *, key: bytes | None = None) -> Path:
    """A fake machine with the seed's MAC on its NIC, the server's signing key and CA baked, the seed written."""
    (root / "sys/class/net/eth0").mkdir(parents=True)
    (root / "sys/class/net/eth0/address").write_text(seed["mac"] + "\n")
    (root / "etc/kiln").mkdir(parents=True)
    (root / "etc/kiln/signing.pub").write_bytes(key or server.secrets.signing_pub.read_bytes())
    (root / "etc/kiln/ca.pem").write_bytes(server.secrets.ca_pem.read_bytes())
    (root / "etc/kiln/seed.json").write_text(json.dumps(seed))
    return root


def firstboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firstboot", *args], capture_output=True, text=True, timeout=120, check=False
    )


def run(root: Path, deadline: str = "30") -> subprocess.CompletedProcess[str]:
    return firstboot("run", "--root", str(root), "--imds-endpoint", "", "--fetch-deadline", deadline)


def status(root: Path) -> str:
    return firstboot("status", "--root", str(root)).stdout


def host_view(server: RunningServer, name: str) -> dict[str, Any]:
    with operator(server) as c:
        return next(h for h in c.get(f"{server.tls_url}/v1/hosts").json()["hosts"] if h["name"] == name)


def access(server: RunningServer, host: str, action: str) -> list[dict[str, Any]]:
    """The access log lines about `host`'s `action`, oldest first."""
    with operator(server) as c:
        rows = c.get(f"{server.tls_url}/v1/access").json()["access"]
    return [r for r in reversed(rows) if r["host"] == host and r["action"] == action]


def host_key(root: Path) -> Ed25519PrivateKey:
    return hostauth.load_private((root / "var/lib/firstboot/host.key").read_bytes())


def signed_get(server: RunningServer, key: Ed25519PrivateKey, host: str, path: str) -> httpx.Response:
    """GET `path` signed with the host key, as an enrolled host sends it."""
    with server.client() as c:
        return c.get(
            f"{server.tls_url}{path}", headers={"Authorization": hostauth.authorization(key, host, "GET", path)}
        )


def state_of(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "var/lib/firstboot/state.json").read_text())
    return data


def test_a_host_enrols_gets_its_secrets_and_its_ack_makes_the_server_withhold_them(
    server: RunningServer, tmp_path: Path
) -> None:
    root = machine(tmp_path / "db2", server, armed_seed(server, "db2"))
    result = run(root)
    assert result.returncode == 0, result.stderr
    for name in ("db_app_password", "db_replication_password", "db_admin_password"):
        path = root / "etc/kiln/secrets" / name
        assert path.read_text() == server.secrets.value(name)
        assert path.stat().st_mode & 0o777 == 0o600
    assert "read_only = ON" in (root / "etc/mysql/mariadb.conf.d/60-kiln.cnf").read_text()
    text = status(root)
    assert "provisioned: db2" in text
    state = state_of(root)
    assert state["enrolled"] is True and state["cluster_id"] == server.secrets.cluster_id()
    assert state["generation"] >= 1
    view = host_view(server, "db2")
    assert (view["state"], view["credential"], view["secrets"]) == ("joined", "enrolled", "acknowledged"), view
    # the host's signed `secrets ok` event acknowledged them: a later signed bundle request gets none
    later = signed_get(server, host_key(root), "db2", "/v1/bundle")
    assert later.status_code == 200, later.text
    signing.verify(
        later.content,
        later.headers["x-kiln-signature"],
        signing.load_public_key(server.secrets.signing_pub.read_bytes()),
    )
    withheld = Bundle.from_json(later.content)
    assert withheld.secrets_withheld is True and all(s.value is None for s in withheld.secrets)
    assert [r["detail"] for r in access(server, "db2", "bundle")][-1] == "secrets withheld (acknowledged)"
    for value in (server.secrets.value("db_admin_password"), server.secrets.value("db_app_password")):
        assert value not in result.stderr + text + (root / "var/lib/firstboot/state.json").read_text()
    # a done host: nothing to do, at once
    started = time.monotonic()
    again = firstboot("run", "--root", str(root))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert time.monotonic() - started < 5


def test_the_agents_events_reach_the_server_in_the_hosts_timeline(server: RunningServer, tmp_path: Path) -> None:
    root = machine(tmp_path / "db1", server, armed_seed(server, "db1"))
    assert run(root).returncode == 0
    timeline = [(e["step"], e["status"]) for e in host_view(server, "db1")["timeline"]]
    steps = ("fetch", "network", "files", "secrets", "firewall", "services", "join", "checks", "done")
    assert timeline == [(s, status) for s in steps for status in ("start", "ok")], timeline
    assert not list((root / "var/lib/firstboot/events").iterdir())  # every one accepted, none left queued


def test_a_lost_enrol_answer_is_retried_and_the_grant_holds(server: RunningServer, tmp_path: Path) -> None:
    seed = armed_seed(server, "app1")
    with LossyProxy(server, drop_enrol=1).running() as proxy:
        root = machine(tmp_path / "app1", server, {**seed, "url": proxy.url})
        result = run(root)
    assert result.returncode == 0, result.stderr
    assert [s for m, p, s in proxy.relayed if p == "/v1/enrol"] == [0, 200]  # the server granted twice
    assert [r["detail"] for r in access(server, "app1", "enrol")] == [
        "key bound; bundle with secrets",
        "same key again (a retry); bundle with secrets",
    ]
    assert (root / "etc/kiln/secrets/db_app_password").read_text() == server.secrets.value("db_app_password")
    assert host_view(server, "app1")["state"] == "joined"


def test_a_second_machine_with_the_same_token_is_refused_and_the_first_provisions(
    server: RunningServer, tmp_path: Path
) -> None:
    seed = armed_seed(server, "web1")
    first = machine(tmp_path / "web1", server, seed)
    (first / "etc/nftables.d").write_text("")  # in the way of a directory: the first host stops at its files step
    assert run(first).returncode == 1
    assert "FAILED at step files" in status(first) and state_of(first)["enrolled"] is True
    clone = machine(tmp_path / "clone", server, seed)  # the same seed, the same MAC; its own key
    refused = run(clone)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    text = status(clone)
    assert "FAILED at step fetch" in text
    assert "the server refused this host's enrolment token: HTTP 403" in text
    assert "already used by another machine" in text and "./inv reprovision HOST" in text
    assert not (clone / "etc/nginx").exists() and not (clone / "var/lib/firstboot/bundle.json").exists()
    assert "credential" in [a["kind"] for a in host_view(server, "web1")["alerts"]]
    (first / "etc/nftables.d").unlink()
    assert run(first).returncode == 0  # the first machine's key is still the bound one
    assert "provisioned: web1" in status(first)
    assert host_view(server, "web1")["state"] == "joined"


def test_an_enrolled_host_that_lost_its_secrets_is_refused_them_and_a_reinstall_needs_a_rearm(
    server: RunningServer, tmp_path: Path
) -> None:
    seed = armed_seed(server, "lb2")
    root = machine(tmp_path / "lb2", server, seed)
    assert run(root).returncode == 0
    # the disk keeps the host key and its enrolment, loses its secrets and its progress: it asks again
    (root / "etc/haproxy/certs/site.pem").unlink()
    for leftover in ("done", "state.json"):
        (root / "var/lib/firstboot" / leftover).unlink()
    (root / "var/lib/firstboot/state.json").write_text(json.dumps({"host": "lb2", "enrolled": True}))
    assert run(root).returncode == 1
    text = status(root)
    assert "FAILED at step secrets" in text
    assert "re-arm the host with ./inv reprovision HOST" in text
    assert not (root / "etc/haproxy/certs/site.pem").exists()
    view = host_view(server, "lb2")
    assert (view["state"], view["secrets"]) == ("failed", "withheld")
    # a reinstalled machine with the old seed: the token was spent when the secrets were acknowledged
    reinstalled = machine(tmp_path / "reinstalled", server, seed)
    assert run(reinstalled).returncode == 1
    text = status(reinstalled)
    assert "the server refused this host's enrolment token: HTTP 401" in text and "./inv reprovision HOST" in text


def test_events_go_with_the_token_until_enrolment_then_signed_and_a_tampered_one_is_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    seed = armed_seed(server, "lb1")
    credential = Credential(Paths(tmp_path), token=seed["token"])
    credential.paths.state_dir.mkdir(parents=True)
    reporter = Reporter(EventQueue(tmp_path / "events"), credential)
    reporter.target(server.tls_url, "lb1", server.tls_context())
    reporter.event("fetch", "start", "before enrolment, with the token")
    assert reporter.flush()  # accepted
    wrong = Reporter(EventQueue(tmp_path / "wrong"), Credential(Paths(tmp_path), token="not-" + seed["token"]))
    wrong.target(server.tls_url, "lb1", server.tls_context())
    wrong.event("fetch", "fail", "with a token that is nobody's")
    assert not wrong.flush() and len(wrong.queue.pending()) == 1  # refused: it stays queued
    # enrol with the host key (the agent's first bundle request), then every event is signed with it
    body = json.dumps({"host_key": credential.public(), "macs": [seed["mac"]]}).encode()
    with server.client() as c:
        enrolled = c.post(
            f"{server.tls_url}/v1/enrol",
            content=body,
            headers={"Authorization": f"Bearer {seed['token']}", "Content-Type": "application/json"},
        )
    assert enrolled.status_code == 200 and enrolled.headers["x-kiln-host"] == "lb1"
    credential.host, credential.enrolled = "lb1", True
    reporter.event("fetch", "ok", "after enrolment, signed")
    assert reporter.flush()
    path = "/v1/hosts/lb1/events"
    event = json.dumps({"step": "network", "status": "start", "detail": "as signed"}).encode()
    headers = {"Content-Type": "application/json", **credential.headers("POST", path, event)}
    assert headers["Authorization"].startswith("KilnHost host=lb1, ")
    tampered = event.replace(b"as signed", b"tampered")
    with server.client() as c:
        refused = c.post(f"{server.tls_url}{path}", content=tampered, headers=headers)
        assert refused.status_code == 401 and "signature does not match" in refused.json()["error"]
        assert c.post(f"{server.tls_url}{path}", content=event, headers=headers).status_code == 201
        replayed = c.post(f"{server.tls_url}{path}", content=event, headers=headers)
        assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]
        # a signed event is admitted in the transaction that stores it; each refusal there still writes nothing
        stranger = hostauth.generate_key()

        def signed(key: Ed25519PrivateKey, host: str, target: str, body: bytes = event) -> httpx.Response:
            auth = {"Authorization": hostauth.authorization(key, host, "POST", target, body)}
            return c.post(f"{server.tls_url}{target}", content=body, headers={**headers, **auth})

        forged = signed(stranger, "lb1", path)
        assert forged.status_code == 401 and "signature does not match" in forged.json()["error"]
        ghost = signed(stranger, "ghost", "/v1/hosts/ghost/events")
        assert ghost.status_code == 401 and "no enrolled key" in ghost.json()["error"], "whether a name exists"
        other = signed(credential.key(), "lb1", "/v1/hosts/lb2/events")
        assert other.status_code == 403 and "cannot write lb2's events" in other.json()["error"]
        garbled = signed(credential.key(), "lb1", path, b'{"step": "network"}')
        assert garbled.status_code == 400, "a body is judged once its credential is"
        unsigned_garble = signed(stranger, "lb1", path, b'{"step": "network"}')
        assert unsigned_garble.status_code == 401, "and not before"
    details = [e["detail"] for e in host_view(server, "lb1")["timeline"]]
    assert details == ["before enrolment, with the token", "after enrolment, signed", "as signed"]


def test_a_bundle_signed_by_another_key_is_refused_and_nothing_applied(server: RunningServer, tmp_path: Path) -> None:
    other = signing.public_key_pem(signing.generate_private_key().public_key())
    root = machine(tmp_path / "web2", server, armed_seed(server, "web2"), key=other)
    result = run(root)
    assert result.returncode == 1
    assert "bundle refused" in result.stderr
    assert not (root / "etc/nginx").exists() and not (root / "etc/hostname").exists()
    text = status(root)
    assert "FAILED at step fetch" in text and "signing key" in text
    assert host_view(server, "web2")["state"] == "failed"


def test_an_unreachable_server_is_retried_until_the_deadline(server: RunningServer, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seed = {"url": f"https://127.0.0.1:{port}", "host": "web2", "mac": "52:54:00:10:00:22", "token": "never-sent"}
    root = machine(tmp_path / "web2", server, seed)
    started = time.monotonic()
    result = run(root, deadline="2")
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert result.stderr.count("retrying in") >= 2 and "Connection refused" in result.stderr
    assert "no bundle within 2s" in status(root)
    assert list((root / "var/lib/firstboot/events").iterdir())  # queued: the server was never reached


# --- a stand-in that signs with the server's own signing key, stamped otherwise: the stamps alone must refuse ---

REPLAY_HINT = "next:   a bundle from an old or impersonating server is not applied"


def impostor(server: RunningServer, tmp: Path, root: Path) -> StandIn:
    """A stand-in signing with the server's secrets/signing.key; `root` a machine that trusts that key."""
    ca, context = tls_for_loopback(tmp)
    key = signing.load_private_key(server.secrets.root / "signing.key")
    standin_machine(root, key, ca=ca)
    return StandIn(bundle(), key, context)


@pytest.mark.parametrize(
    ("stamp", "says"),
    [
        pytest.param(
            {"cluster_id": CLUSTER_ID}, rf"it is cluster {CLUSTER_ID}'s \(test\), this host belongs to", id="cluster"
        ),
        pytest.param({"issued": time.time() - 2 * 86400, "ttl": 86400}, r"it expired 86\d\d\d s ago", id="expired"),
    ],
)
def test_a_bundle_of_another_cluster_or_expired_is_refused(
    server: RunningServer, tmp_path: Path, stamp: dict[str, Any], says: str
) -> None:
    root = tmp_path / "root"
    stand_in = impostor(server, tmp_path, root)
    stand_in.stamp = {"cluster_id": server.secrets.cluster_id(), **stamp}
    (root / "etc/kiln/agent.json").write_text(json.dumps({"cluster_id": server.secrets.cluster_id()}))  # baked
    with stand_in.running():
        standin_seed(root, stand_in.url)
        result = run(root, deadline="5")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert stand_in.host_key is not None  # it did enrol: the refusal is the agent's, of what it was served
    text = status(root)
    assert "FAILED at step fetch" in text and re.search(f"reason: bundle refused: {says}", text) and REPLAY_HINT in text
    assert not (root / "etc/hostname").exists() and not (root / "etc/kiln/secrets").exists()
    assert not (root / "var/lib/firstboot/bundle.json").exists()


@pytest.mark.parametrize(
    ("accepted", "replayed", "says"),
    [
        pytest.param(
            {"generation": 5},
            {"generation": 4},
            "generation 4 is older than generation 5, which this host already accepted",
            id="older-generation",
        ),
        pytest.param(
            {"cluster_id": "a" * 32},
            {"cluster_id": "b" * 32},
            f"it is cluster {'b' * 32}'s (test), this host belongs to cluster {'a' * 32}",
            id="not-the-first-cluster",
        ),
    ],
)
def test_a_bundle_older_than_or_foreign_to_the_one_accepted_is_refused(
    server: RunningServer, tmp_path: Path, accepted: dict[str, Any], replayed: dict[str, Any], says: str
) -> None:
    root = tmp_path / "root"
    stand_in = impostor(server, tmp_path, root)
    stand_in.bundle = bundle(secrets={n: None for n in SECRETS}, withheld=True)
    stand_in.stamp = accepted
    with stand_in.running():
        standin_seed(root, stand_in.url)
        first = run(root, deadline="5")  # accepted; it stops at the secrets it was not given
        assert first.returncode == 1 and "FAILED at step secrets" in status(root)
        (root / "var/lib/firstboot/bundle.json").unlink()  # the cached bundle is gone: the host asks again
        old = bundle()
        stand_in.bundle = replace(old, files=(*old.files, File("/etc/kiln/replayed", "x\n")))
        stand_in.stamp = replayed
        second = run(root, deadline="5")
    assert second.returncode == 1
    text = status(root)
    assert "FAILED at step fetch" in text and f"reason: bundle refused: {says}" in text and REPLAY_HINT in text
    assert not (root / "etc/kiln/replayed").exists() and not (root / "etc/kiln/secrets/db_app_password").exists()
    assert [r.path for r in stand_in.requests if r.path == "/v1/bundle"]  # the second run asked signed
