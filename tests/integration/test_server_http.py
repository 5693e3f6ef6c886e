"""The provisioning server over real HTTP and HTTPS: iPXE scripts per MAC, signed bundles, the one-time
secrets rule and re-arming, images with Range requests, events and states, and bad input."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import socket
import sqlite3
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from kiln import hostauth, signing
from kiln.bundle import Bundle
from kiln.server.app import SINCE_OVERLAP
from tests.integration.kiln_server import (
    LOOPBACK_URL,
    PROJECT,
    RunningServer,
    loopback_roles,
    running_server,
    write_manifest,
)

pytestmark = pytest.mark.integration

PATTERN = bytes(range(256)) * 4096
RAW = PATTERN + bytes(5 << 20) + PATTERN[::-1]  # 7 MiB stand-in for images/web/web.raw: data, zeros, data


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "installer").mkdir()
    (root / "installer" / "vmlinuz").write_bytes(b"kernel" * 100)
    (root / "installer" / "initrd.img").write_bytes(b"initrd" * 100)
    (root / "web").mkdir()
    (root / "web" / "web.raw").write_bytes(RAW)
    write_manifest(root, "web")
    (root.parent / "outside.txt").write_text("not for download")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, images: Path):
    with running_server(tmp_path_factory.mktemp("serve"), images=images) as s:
        yield s


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory, images: Path):
    """A server of its own for the credential tests: they enrol hosts, whose tokens then no longer sign events."""
    with running_server(tmp_path_factory.mktemp("serve-creds"), images=images) as s:
        yield s


def host_view(server: RunningServer, name: str) -> dict:
    with server.client() as c:
        data = c.get(f"{server.tls_url}/v1/hosts").json()
    return next(h for h in data["hosts"] if h["name"] == name)


def post(server: RunningServer, host: str, body: object) -> httpx.Response:
    """An event as the host's installer sends it: with the host's enrolment token."""
    token = server.token(host) if host in HOSTS else "x" * 43
    with server.client(operator=False, headers={"Authorization": f"Bearer {token}"}) as c:
        return c.post(f"{server.tls_url}/v1/hosts/{host}/events", json=body)


HOSTS = {"lb1", "lb2", "web1", "web2", "app1", "db1", "db2"}


def test_startup_prints_the_signing_key_fingerprint(server: RunningServer) -> None:
    key = signing.load_public_key(server.secrets.signing_pub.read_bytes())
    assert server.fingerprint == signing.fingerprint(key)
    assert "created" in server.output()  # the secrets were missing, so the server made them


def test_boot_script_chains_by_mac(server: RunningServer) -> None:
    r = httpx.get(f"{server.http_url}/boot.ipxe")
    assert r.status_code == 200
    assert r.text.startswith("#!ipxe\n")
    assert f"chain --replace --autofree {server.http_url}/ipxe?mac=${{netX/mac}}" in r.text


def test_install_script_carries_the_contract_command_line(server: RunningServer) -> None:
    r = httpx.get(f"{server.http_url}/ipxe", params={"mac": "52:54:00:10:00:21"})
    assert r.status_code == 200
    kernel = next(line for line in r.text.splitlines() if line.startswith("kernel "))
    words = kernel.split()
    assert words[1] == f"{server.http_url}/images/installer/vmlinuz"
    assert f"kiln.image={server.http_url}/images/web/web.data" in words
    assert f"kiln.map={server.http_url}/images/web/web.map" in words
    assert f"kiln.size={len(RAW)}" in words
    assert {
        f"kiln.url={LOOPBACK_URL}",
        "kiln.host=web1",
        f"kiln.token={server.token('web1')}",
        "BOOTIF=01-52-54-00-10-00-21",
        "console=ttyS0,115200n8",
    } <= set(words)
    assert f"initrd {server.http_url}/images/installer/initrd.img" in r.text
    assert r.text.rstrip().endswith("boot")
    # what the script points at is really there, byte for byte
    assert httpx.get(words[1]).content == b"kernel" * 100
    data = httpx.get(f"{server.http_url}/images/web/web.data")
    map_text = httpx.get(f"{server.http_url}/images/web/web.map").text
    assert map_text == "data 0 1\nzero 1 5\ndata 6 1\n"
    assert data.content == PATTERN + PATTERN[::-1] and data.headers["content-length"] == str(2 << 20)
    digest = hashlib.sha256(data.content + map_text.encode()).hexdigest()
    assert f"kiln.sha256={digest}" in words, "the digest the installer checks covers the data and the map"
    assert host_view(server, "web1")["state"] == "booting"
    with server.client() as c:
        timeline = c.get(f"{server.tls_url}/v1/hosts/web1").json()["timeline"]
    served = [e["detail"] for e in timeline if "installer script served" in e["detail"]]
    assert served and f"(web image, digest {digest[:12]}) to 127.0.0.1" in served[-1], "which build it installs"


def test_script_says_when_the_role_image_is_not_built(server: RunningServer) -> None:
    r = httpx.get(f"{server.http_url}/ipxe", params={"mac": "52-54-00-10-00-41"})  # hyphens and upper case work too
    assert r.status_code == 200
    assert "the db image (images/db/db.raw) is not built yet: run ./inv build --role db" in r.text
    assert "kernel" not in r.text
    assert "sleep 30" in r.text and f"chain --replace --autofree {server.http_url}/ipxe?mac=${{netX/mac}}" in r.text


def test_unknown_machine_gets_a_retry_script_and_shows_on_the_dashboard(server: RunningServer) -> None:
    r = httpx.get(f"{server.http_url}/ipxe", params={"mac": "52:54:00:AB:CD:EF"})
    assert r.status_code == 200
    assert "MAC 52:54:00:ab:cd:ef) is not in roles.yaml" in r.text
    assert "sleep" in r.text and "chain" in r.text and "kernel" not in r.text
    with server.client() as c:
        unknown = c.get(f"{server.tls_url}/v1/hosts").json()["unknown_machines"]
    assert {"mac": "52:54:00:ab:cd:ef", "label": "unknown machine"}.items() <= next(
        u for u in unknown if u["mac"] == "52:54:00:ab:cd:ef"
    ).items()


def test_installed_host_boots_from_its_disk(server: RunningServer) -> None:
    assert post(server, "web2", {"step": "install", "status": "start"}).status_code == 201
    assert host_view(server, "web2")["state"] == "installing"
    assert post(server, "web2", {"step": "install", "status": "ok", "detail": "wrote 4 GiB"}).status_code == 201
    script = httpx.get(f"{server.http_url}/ipxe", params={"mac": "52:54:00:10:00:22"}).text
    assert "sanboot --no-describe --drive 0x80 || sanboot --no-describe --drive 0x81 || " in script
    assert script.rstrip().endswith("sanboot --no-describe --drive 0x83 || exit")
    assert "kernel" not in script
    # re-armed, the installed host gets the installer again
    done = server.inv("reprovision", "web2", "--roles", str(server.roles), "--database", server.database)
    assert done.returncode == 0, done.stdout + done.stderr
    script = httpx.get(f"{server.http_url}/ipxe", params={"mac": "52:54:00:10:00:22"}).text
    assert "kiln.host=web2" in script and "sanboot" not in script


def test_bundle_is_signed_over_its_exact_bytes_and_stamped(creds: RunningServer) -> None:
    r = creds.host("web2", "52:54:00:10:00:22").enrol()
    assert r.status_code == 200, r.text
    key = signing.load_public_key(creds.secrets.signing_pub.read_bytes())
    signing.verify(r.content, r.headers["X-Kiln-Signature"], key)
    bundle = Bundle.from_json(r.content)
    assert (bundle.host.name, bundle.host.mac) == ("web2", "52:54:00:10:00:22")
    assert bundle.cluster_id == creds.secrets.cluster_id() and bundle.generation >= 1
    assert 0 < bundle.expires_at - time.time() <= 24 * 3600 + 5 and abs(bundle.issued_at - time.time()) < 60
    with pytest.raises(signing.SignatureError):
        signing.verify(r.content.replace(b"web2", b"web1"), r.headers["X-Kiln-Signature"], key)


def test_shared_contents_are_served_by_the_digest_the_bundle_names_to_hosts_only(creds: RunningServer) -> None:
    web2 = creds.host("lb2", "52:54:00:10:00:12")
    bundle = Bundle.from_json(web2.enrol().content)
    hosts = next(f for f in bundle.files if f.path == "/etc/hosts")
    assert hosts.shared and not hosts.content, "/etc/hosts travels once per cluster, not in every bundle"
    for digest in bundle.shared_digests():
        got = web2.signed("GET", f"/v1/shared/{digest}")
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest
    assert "10.10.0.41\tdb1.foobar db1" in web2.signed("GET", f"/v1/shared/{hosts.shared}").text
    assert web2.signed("GET", f"/v1/shared/{'0' * 64}").status_code == 404
    with creds.client(operator=False) as anyone:
        assert anyone.get(f"{creds.tls_url}/v1/shared/{hosts.shared}").status_code == 401


def test_a_mac_selects_nothing_and_authorises_nothing(server: RunningServer) -> None:
    """Anyone on the network asking by MAC, or with no credential, gets a 401 and no secret."""
    with server.client(operator=False) as anyone:
        for mac in ("52:54:00:10:00:42", "52:54:00:99:99:99"):
            r = anyone.get(f"{server.tls_url}/v1/bundle", params={"mac": mac})
            assert r.status_code == 401 and server.secrets.value("db_replication_password") not in r.text
        assert anyone.get(f"{server.tls_url}/v1/hosts").status_code == 401
        assert anyone.get(f"{server.tls_url}/v1/hosts/db2/seed").status_code == 401
        assert anyone.get(f"{server.tls_url}/", follow_redirects=False).headers["location"] == "/login"
    refused = [a for a in _access(server) if a["outcome"] == "refused" and a["action"] == "bundle"]
    assert refused and refused[0]["peer"] == "127.0.0.1", "every refusal is logged with the peer address"


def _access(server: RunningServer) -> list[dict]:
    with server.client() as c:
        return c.get(f"{server.tls_url}/v1/access").json()["access"]


def test_secrets_until_acknowledged_a_lost_response_is_retried_then_none_without_a_rearm(creds: RunningServer) -> None:
    db2 = creds.host("db2", "52:54:00:10:00:42")
    token = creds.token("db2")
    first = Bundle.from_json(db2.enrol(token).content)
    assert not first.secrets_withheld
    assert {s.name: s.value for s in first.secrets} == creds.secrets.values_for(first)
    # the answer was lost: the same token and key again get the secrets again
    again = db2.enrol(token)
    assert again.status_code == 200 and not Bundle.from_json(again.content).secrets_withheld
    assert not Bundle.from_json(db2.bundle().content).secrets_withheld, "signed by the key, before the ack"
    assert db2.signed("HEAD", "/v1/bundle").status_code == 405, "a HEAD is never a grant"
    assert db2.event("secrets", "ok").status_code == 201  # the acknowledgement
    after = Bundle.from_json(db2.bundle().content)
    assert after.secrets_withheld and all(s.value is None for s in after.secrets)
    assert db2.enrol(token).status_code == 401, "the token is spent"
    view = host_view(creds, "db2")
    assert view["secrets"] == "withheld" and view["credential"] == "enrolled"
    assert "db2 asked for its secrets again after it acknowledged them" in [a["message"] for a in view["alerts"]]

    # the operator re-arms db2 with the task, against the same database, while the creds runs
    # --force: no db host runs here to show db2 is not the primary
    done = creds.inv("reprovision", "db2", "--force", "--roles", str(creds.roles), "--database", creds.database)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "db2: re-armed" in done.stdout
    view = host_view(creds, "db2")
    assert view["alerts"] == [] and view["state"] == "waiting" and view["provisioning"] == 2
    assert db2.bundle().status_code == 401, "the old key is unbound"
    fresh = creds.host("db2", "52:54:00:10:00:42")
    third = Bundle.from_json(fresh.enrol().content)
    assert not third.secrets_withheld and all(s.value for s in third.secrets)


def test_a_token_used_by_another_machine_first_is_refused_to_the_second_and_alerts(creds: RunningServer) -> None:
    token = creds.token("lb1")
    machines = [creds.host("lb1", "52:54:00:10:00:11") for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda m: m.enrol(token).status_code, machines))
    assert sorted(codes) == [200] + [403] * 11, "exactly one key is bound"
    lb1 = host_view(creds, "lb1")
    assert any(a["kind"] == "credential" and "already used by another machine" in a["message"] for a in lb1["alerts"])
    done = creds.inv("reprovision", "lb1", "--roles", str(creds.roles), "--database", creds.database)
    assert done.returncode == 0 and host_view(creds, "lb1")["alerts"] == []


def test_a_token_is_only_for_its_own_machine(creds: RunningServer) -> None:
    app1 = creds.host("app1", "52:54:00:10:00:31")
    r = app1.enrol(creds.token("app1"), macs=["52:54:00:77:77:77"])
    assert r.status_code == 403 and "none of this machine's NICs" in r.json()["error"]
    assert app1.enrol(creds.token("app1")).status_code == 200, "nothing was bound by the refused attempt"


def test_events_come_only_from_the_host_itself(creds: RunningServer) -> None:
    web1 = creds.host("web1", "52:54:00:10:00:21")
    with creds.client(operator=False) as anyone:
        url = f"{creds.tls_url}/v1/hosts/web1/events"
        body = {"step": "install", "status": "ok", "detail": "forged"}
        assert anyone.post(url, json=body).status_code == 401
        assert anyone.post(url, json=body, headers={"Authorization": "Bearer " + "x" * 43}).status_code == 401
        plain = anyone.post(url, content=json.dumps(body), headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415, "text/plain is what a browser could send cross-site"
        other = anyone.post(url, json=body, headers={"Authorization": f"Bearer {creds.token('db1')}"})
        assert other.status_code == 403, "db1's token cannot write web1's events"
    assert web1.enrol().status_code == 200
    forged = web1.signed(
        "POST", "/v1/hosts/db1/events", b'{"step": "install", "status": "ok"}', **{"Content-Type": "application/json"}
    )
    assert forged.status_code == 403
    replayed_auth = hostauth.authorization(web1.key, "web1", "POST", "/v1/hosts/web1/events", b"{}")
    with creds.client(operator=False) as anyone:
        headers = {"Authorization": replayed_auth, "Content-Type": "application/json"}
        tampered = anyone.post(
            f"{creds.tls_url}/v1/hosts/web1/events", content=b'{"step": "done", "status": "ok"}', headers=headers
        )
    assert tampered.status_code == 401, "a signature covers its body"
    assert host_view(creds, "db1")["installed"] is False, "nothing forged changed db1's boot decision"


def test_reprovision_of_an_unknown_host_fails_clearly(server: RunningServer) -> None:
    done = server.inv("reprovision", "nosuch", "--roles", str(server.roles), "--database", server.database)
    assert done.returncode == 1
    assert "no host named 'nosuch'" in done.stderr


def test_reprovision_refuses_a_database_that_is_not_the_servers(server: RunningServer, tmp_path: Path) -> None:
    """A mistyped --database is refused and left uncreated, not answered with a fresh empty database that
    "re-arms" a host the running server never hears of; so is an SQLite file that is not kiln's."""
    mistyped = tmp_path / "wrong.db"
    done = server.inv("reprovision", "web1", "--roles", str(server.roles), "--database", f"sqlite:///{mistyped}")
    assert done.returncode == 1 and "re-armed" not in done.stdout
    assert "no such state database" in done.stderr and "./inv serve uses" in done.stderr, done.stderr
    assert not mistyped.exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE notes (x)").connection.commit()
    done = server.inv("reprovision", "web1", "--roles", str(server.roles), "--database", f"sqlite:///{other}")
    assert done.returncode == 1 and "not a kiln state database" in done.stderr, done.stderr
    assert [r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_data_of_an_image_that_is_not_there_is_404(server: RunningServer) -> None:
    assert httpx.get(f"{server.http_url}/images/db/db.data").status_code == 404  # not built
    assert httpx.get(f"{server.http_url}/images/web/db.data").status_code == 404
    assert httpx.get(f"{server.http_url}/images/nosuch/nosuch.data").status_code == 404


def test_range_requests_resume_an_interrupted_download(server: RunningServer) -> None:
    url = f"{server.http_url}/images/web/web.raw"
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(RAW)
    assert head.headers["accept-ranges"] == "bytes"
    part = httpx.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(RAW)}"
    assert part.content == RAW[1000:2000]
    got = RAW[:300_000]  # a download cut off after 300 kB resumes where it stopped
    rest = httpx.get(url, headers={"Range": f"bytes={len(got)}-"})
    assert rest.status_code == 206 and got + rest.content == RAW
    assert httpx.get(url, headers={"Range": f"bytes={len(RAW) + 10}-"}).status_code == 416


def test_events_move_a_host_to_joined_with_its_timeline(server: RunningServer) -> None:
    steps = ["install", "fetch", "network", "files", "secrets", "firewall", "services", "join", "checks", "done"]
    for step in steps[:-1]:
        assert post(server, "app1", {"step": step, "status": "start", "at": "2026-11-23T10:00:00Z"}).status_code == 201
        assert post(server, "app1", {"step": step, "status": "ok", "duration": 1.5}).json()["state"] in (
            "booting",
            "configuring",
        )
    mid = host_view(server, "app1")
    assert mid["state"] == "configuring" and mid["progress"] == 90
    post(server, "app1", {"step": "done", "status": "start"})
    assert post(server, "app1", {"step": "done", "status": "ok"}).json()["state"] == "joined"
    app1 = host_view(server, "app1")
    assert app1["state"] == "joined" and app1["progress"] == 100
    assert app1["last_event"]["step"] == "done" and app1["last_event"]["status"] == "ok"
    assert [(e["step"], e["status"]) for e in app1["timeline"]] == [(s, st) for s in steps for st in ("start", "ok")]
    assert app1["timeline"][0]["at"] == "2026-11-23T10:00:00Z" and app1["timeline"][1]["duration"] == 1.5


def test_one_host_with_its_timeline_for_the_operator_only(server: RunningServer) -> None:
    """GET /v1/hosts/NAME: what the dashboard loads when the operator opens a host; the installer's "N of M MB"
    gives the running step its own progress."""
    post(server, "lb1", {"step": "install", "status": "start", "detail": "writing web.raw to /dev/vda"})
    post(server, "lb1", {"step": "install", "status": "start", "detail": "writing: 300 of 851 MB"})
    with server.client() as c:
        lb1 = c.get(f"{server.tls_url}/v1/hosts/lb1").json()
        listed = c.get(f"{server.tls_url}/v1/hosts?timeline=0").json()
        assert c.get(f"{server.tls_url}/v1/hosts/nosuch").status_code == 404
    assert lb1["name"] == "lb1" and lb1["state"] == "installing" and lb1["progress"] == 0
    assert [e["detail"] for e in lb1["timeline"]][-2:] == ["writing web.raw to /dev/vda", "writing: 300 of 851 MB"]
    assert lb1["last_event"]["progress"] == 35, "300 of 851 MB"
    assert all("timeline" not in h for h in listed["hosts"]), "the list poll leaves every timeline out"
    with server.client(operator=False) as anyone:
        assert anyone.get(f"{server.tls_url}/v1/hosts/lb1").status_code == 401
    post(server, "lb1", {"step": "install", "status": "ok"})
    with server.client() as c:
        assert c.get(f"{server.tls_url}/v1/hosts/lb1").json()["last_event"]["progress"] is None


def test_a_poll_with_since_carries_only_the_hosts_changed_and_every_alert(server: RunningServer) -> None:
    with server.client() as c:
        time.sleep(SINCE_OVERLAP + 0.2)  # nothing else changed within the overlap a delta poll reaches back
        first = c.get(f"{server.tls_url}/v1/hosts?timeline=0").json()
        assert first["full"] and len(first["hosts"]) == first["count"] == 8
        post(server, "web2", {"step": "fetch", "status": "fail", "detail": "no route"})
        later = c.get(f"{server.tls_url}/v1/hosts?timeline=0&since={first['now']}").json()
        assert not later["full"] and later["count"] == 8
        assert [h["name"] for h in later["hosts"]] == ["web2"], "only what changed since (with a few s of overlap)"
        assert any(a["host"] == "web2" and a["kind"] == "failed" for a in later["alerts"])
        assert c.get(f"{server.tls_url}/v1/hosts?since=yesterday").status_code == 400
    post(server, "web2", {"step": "fetch", "status": "ok"})


def test_a_failed_step_shows_as_failed_with_an_alert_and_resumes(server: RunningServer) -> None:
    post(server, "lb2", {"step": "join", "status": "start"})
    assert (
        post(server, "lb2", {"step": "join", "status": "fail", "detail": "keepalived did not start"}).json()["state"]
        == "failed"
    )
    lb2 = host_view(server, "lb2")
    assert lb2["state"] == "failed"
    assert lb2["alerts"][0]["message"] == "lb2 failed at join: keepalived did not start"
    # the server's log tells every event as it comes, on one line, whatever the host's text holds
    post(server, "lb2", {"step": "join", "status": "fail", "detail": "line one\nline two\r\x1b[31m" + "x" * 400})
    log = server.output()
    assert "lb2: join fail: keepalived did not start (now failed)" in log
    [forged] = [line for line in log.splitlines() if "lb2: join fail: line one" in line]
    shown = "line one line two [31m"  # control characters as one space each run; cut at 300 characters
    assert forged.endswith(f": join fail: {shown}{'x' * (300 - len(shown))}… (now failed)"), forged
    assert "\x1b" not in log
    assert lb2["last_event"]["duration"] is not None  # measured from the step's start
    assert post(server, "lb2", {"step": "join", "status": "start"}).json()["state"] == "configuring"


@pytest.mark.parametrize(
    "mac",
    ["", "zz", "52:54:00:10:00", "52:54:00:10:00:211", "52:54:00-10:00:21", "52:54:00:10:00:2g", "%00" * 9, "x" * 5000],
)
def test_malformed_macs_are_refused(server: RunningServer, mac: str) -> None:
    r = httpx.get(f"{server.http_url}/ipxe", params={"mac": mac})
    assert r.status_code == 400 and "mac" in r.text.lower()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "is not of type 'object'"),
        (b'{"step": "install"}', "'status' is a required property"),
        (b'{"step": "install", "status": "maybe"}', "$.status"),
        (b'{"step": "install", "status": "ok", "extra": 1}', "Additional properties"),
        (b'{"step": "install", "status": "ok", "duration": -1}', "$.duration"),
    ],
)
def test_malformed_events_are_400_with_the_reason(server: RunningServer, body: bytes, reason: str) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {server.token('web1')}"}
    with server.client(operator=False) as c:
        r = c.post(f"{server.tls_url}/v1/hosts/web1/events", content=body, headers=headers)
    assert r.status_code == 400
    assert reason in r.json()["error"]


def test_event_for_an_unknown_host_is_refused(server: RunningServer) -> None:
    r = post(server, "nosuch", {"step": "install", "status": "ok"})
    assert r.status_code == 401


def test_huge_bodies_are_refused_and_the_server_stays_up(server: RunningServer) -> None:
    huge = b'{"step": "install", "status": "ok", "detail": "' + b"x" * 5_000_000 + b'"}'
    headers = {"Content-Type": "application/json"}
    with server.client(headers=headers) as c:
        assert c.post(f"{server.tls_url}/v1/hosts/web1/events", content=huge).status_code == 413

        def chunks():  # no Content-Length: the limit holds for a streamed body too
            for _ in range(100):
                yield b"x" * 65536

        assert c.post(f"{server.tls_url}/v1/hosts/web1/events", content=chunks()).status_code == 413
        assert c.get(f"{server.tls_url}/v1/hosts").status_code == 200


def _raw_get(base: str, target: str) -> bytes:
    """Send the request target exactly as given (clients would normalise the dots away)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    "target",
    [
        "/images/../outside.txt",
        "/images/%2e%2e/outside.txt",
        "/images/..%2foutside.txt",
        "/images/web/../../outside.txt",
        "/images//etc/passwd",
    ],
)
def test_path_traversal_under_images_is_refused(server: RunningServer, target: str) -> None:
    response = _raw_get(server.http_url, target)
    status = int(response.split(b" ", 2)[1])
    assert status in (400, 404), response[:200]
    assert b"not for download" not in response and b"root:" not in response


def test_bundles_are_never_served_over_plain_http(server: RunningServer) -> None:
    assert httpx.get(f"{server.http_url}/v1/bundle", params={"mac": "52:54:00:10:00:21"}).status_code == 404
    assert httpx.post(f"{server.http_url}/v1/enrol", json={}).status_code in (404, 405)
    r = httpx.get(f"{server.http_url}/")
    assert r.status_code == 307 and r.headers["location"] == f"{server.tls_url}/"


def test_concurrent_events_for_one_host_are_all_kept(server: RunningServer) -> None:
    token = server.token("web1")

    def send(i: int) -> int:
        with server.client(operator=False, headers={"Authorization": f"Bearer {token}"}) as c:
            return c.post(
                f"{server.tls_url}/v1/hosts/web1/events",
                json={"step": "files", "status": "start" if i % 2 else "ok", "detail": f"#{i}"},
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, range(64)))
    assert codes == [201] * 64
    web1 = host_view(server, "web1")
    details = [e["detail"] for e in web1["timeline"] if e["step"] == "files"]
    assert sorted(details) == sorted(f"#{i}" for i in range(64))
    assert web1["state"] == "configuring"
    assert server.process.poll() is None


def test_sigterm_stops_cleanly(tmp_path: Path, images: Path) -> None:
    with running_server(tmp_path, images=images) as s:
        assert "generation 1" in s.output()
    assert s.process.returncode == 0  # SIGTERM: both listeners closed, the database closed
    assert s.output().rstrip().endswith("kiln serve: stopped")


JSON_HEADER = "Content-Type: application/json"


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static (what the PXE installer runs)")
def test_the_installers_busybox_wget_can_report_over_https(server: RunningServer) -> None:
    """The installer's only HTTPS client is busybox wget's own TLS (no openssl on its PATH)."""
    done = subprocess.run(
        [
            "/bin/busybox",
            "wget",
            "-q",
            "-O",
            "-",
            "--no-check-certificate",
            "--header",
            JSON_HEADER,
            "--header",
            f"Authorization: Bearer {server.token('db1')}",
            "--post-data",
            '{"step": "install", "status": "start", "detail": "from busybox"}',
            f"{server.tls_url}/v1/hosts/db1/events",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/nonexistent"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"host": "db1", "state": "installing"}


def test_other_clients_still_get_tls_1_3_and_weak_ciphers_are_refused(server: RunningServer) -> None:
    parts = urlsplit(server.tls_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as raw:
        with server.tls_context().wrap_socket(raw, server_hostname=parts.hostname) as tls:
            assert tls.version() == "TLSv1.3"
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    weak.check_hostname, weak.verify_mode = False, ssl.CERT_NONE
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")  # CBC, no AEAD: refused
    with pytest.raises(ssl.SSLError), socket.create_connection((parts.hostname, parts.port), timeout=5) as raw:
        weak.wrap_socket(raw, server_hostname=parts.hostname)


def _disks(*disks: tuple[str, int, str, bool]) -> dict:
    """What the installer reports of its disks (name, bytes, serial, removable): lsblk's shape, with sysfs paths."""
    return {
        "blockdevices": [
            {
                "name": name,
                "size": size,
                "type": "disk",
                "rm": removable,
                "ro": False,
                "model": None,
                "serial": serial,
                "wwn": None,
                "mountpoints": [],
                "devpath": f"/devices/pci0000:00/0000:00:{4 + i:02x}.0/virtio{i}/block/{name}",
            }
            for i, (name, size, serial, removable) in enumerate(disks)
        ]
    }


def test_the_installer_asks_which_disk_and_the_host_rule_answers(server: RunningServer) -> None:
    url = f"{server.tls_url}/v1/hosts/web1/disk"
    stick = ("sda", 4 << 30, "STICK", True)
    with server.client(operator=False, headers={"Authorization": f"Bearer {server.token('web1')}"}) as web1:
        one = web1.post(url, json=_disks(("vda", 8 << 30, "D1", False), stick))
        assert (one.status_code, one.text) == (200, "disk /dev/vda\n")
        two = web1.post(url, json=_disks(("vda", 8 << 30, "D1", False), ("vdb", 8 << 30, "D2", False), stick))
        assert two.status_code == 200
        assert two.text.startswith(
            "refuse the default rule (the smallest usable disk) matches 2 disks (vda, vdb), refusing to guess"
        )
        assert "vda 8G serial D1 path pci-0000:00:04.0; vdb 8G serial D2 path pci-0000:00:05.0; sda 4G" in two.text
        assert "(removable)" in two.text and two.text.endswith("\n") and two.text.count("\n") == 1
        assert web1.post(url, json={"disks": []}).status_code == 400
        assert web1.post(url, json=[1]).status_code == 400
    with server.client(operator=False) as anyone:
        assert anyone.post(url, json=_disks(stick)).status_code == 401
        other = anyone.post(url, json=_disks(stick), headers={"Authorization": f"Bearer {server.token('db1')}"})
        assert other.status_code == 403, "db1's token cannot choose web1's disk"
        plain = anyone.post(url, content="{}", headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415


def test_a_raid1_rule_answers_with_both_disks(tmp_path: Path, images: Path) -> None:
    """web2 with `disk: {raid: 1}`: the installer is told to mirror the root across the two smallest usable disks,
    and refused, with what it saw, when it has only one."""
    text = (PROJECT / "roles.yaml").read_text().replace("ip: 10.10.0.22,", "ip: 10.10.0.22, disk: {raid: 1},")
    assert "disk: {raid: 1}" in text
    with running_server(tmp_path, roles=loopback_roles(tmp_path, text), images=images) as s:
        url = f"{s.tls_url}/v1/hosts/web2/disk"
        with s.client(operator=False, headers={"Authorization": f"Bearer {s.token('web2')}"}) as web2:
            big = ("vdc", 16 << 30, "D3", False)
            pair = web2.post(url, json=_disks(("vda", 8 << 30, "D1", False), ("vdb", 8 << 30, "D2", False), big))
            assert (pair.status_code, pair.text) == (200, "raid1 /dev/vda /dev/vdb\n")
            one = web2.post(url, json=_disks(("vda", 8 << 30, "D1", False), ("sda", 4 << 30, "STICK", True)))
            assert one.text.startswith(
                "refuse the default rule (the two smallest usable disks, raid 1) needs 2 disks and only vda fits"
            )
    assert "web2: installs onto /dev/vda /dev/vdb (the default rule (the two smallest usable disks, raid 1))" in (
        (tmp_path / "serve.log").read_text()
    )
