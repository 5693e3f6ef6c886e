"""The provisioning server's own /metrics and /healthz, on a real `./inv serve`: scrapes parsed with
prometheus_client's parser move with real requests (an enrolment, refusals), hosts by state match the state
database, and /metrics is refused outside the admin networks."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln import monitoring
from kiln.db.report import report_backup
from kiln.operator import Server
from kiln.server.states import State
from tests.integration.db_views import MANIFEST
from tests.integration.kiln_server import PROJECT, RunningServer, loopback_roles, running_server

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("serve-metrics")) as s:
        yield s


def scrape(url: str, **kwargs: object) -> Samples:
    answer = httpx.get(f"{url}/metrics", **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_an_enrolment_and_refusals_move_the_counters(server: RunningServer) -> None:
    before = scrape(server.http_url)
    web1 = server.host("web1", "52:54:00:10:00:21")
    assert web1.enrol().status_code == 200
    with server.client(operator=False) as anyone:
        assert anyone.get(f"{server.tls_url}/v1/hosts").status_code == 401
        assert anyone.get(f"{server.tls_url}/v1/hosts/web1").status_code == 401
    stranger = server.host("web2", "52:54:00:10:00:22")
    assert stranger.bundle().status_code == 401  # signed by a key nobody bound
    assert httpx.get(f"{server.http_url}/ipxe", params={"mac": "52:54:00:99:99:99"}).status_code == 200
    after = scrape(server.http_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("kiln_server_grants_total", action="enrol") == 1
    assert moved("kiln_server_enrolments_total", outcome="bound") == 1
    assert moved("kiln_server_enrolments_total", outcome="retry") == 0
    assert moved("kiln_server_refusals_total", action="hosts", reason="unauthenticated") == 2
    assert moved("kiln_server_refusals_total", action="bundle", reason="unauthenticated") == 1
    assert moved("kiln_server_refusals_total", action="ipxe", reason="unknown_machine") == 1
    route = {"listener": "https", "route": "/v1/enrol", "method": "POST"}
    assert moved("kiln_server_http_requests_total", **route, status="200") == 1
    assert moved("kiln_server_http_request_duration_seconds_count", **route) == 1
    assert moved("kiln_server_http_request_duration_seconds_sum", **route) > 0
    # the route's template, never the host's name: a client cannot grow the label set
    one_host = {"listener": "https", "route": "/v1/hosts/{name}", "method": "GET", "status": "401"}
    assert moved("kiln_server_http_requests_total", **one_host) == 1
    assert not any(("route", "/v1/hosts/web1") in labels for _, labels in after)
    unmatched = {"listener": "https", "route": "unmatched", "method": "GET", "status": "404"}
    with server.client() as c:
        assert c.get(f"{server.tls_url}/no/such/page").status_code == 404
    assert value(scrape(server.http_url), "kiln_server_http_requests_total", **unmatched) == 1


def test_a_rate_limited_host_is_counted(server: RunningServer) -> None:
    before = scrape(server.http_url)
    statuses: list[int] = []
    with server.client(operator=False) as c:  # one kept connection: faster than the host's 10/s refill
        while 429 not in statuses and len(statuses) < 1000:  # a host's burst is 100
            answer = c.post(f"{server.tls_url}/v1/hosts/app1/events", json={"step": "fetch", "status": "start"})
            statuses.append(answer.status_code)
    assert 429 in statuses and set(statuses) == {401, 429}  # throttled before its (missing) credential is read
    after = scrape(server.http_url)
    refused = value(after, "kiln_server_refusals_total", action="event", reason="rate_limited") - value(
        before, "kiln_server_refusals_total", action="event", reason="rate_limited"
    )
    assert refused == statuses.count(429)


def store_counts(server: RunningServer) -> dict[str, int]:
    path = server.database.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT state, count(*) FROM hosts GROUP BY state").fetchall())


def test_hosts_by_state_match_the_store(server: RunningServer) -> None:
    token = server.token("db2")
    with server.client(operator=False, headers={"Authorization": f"Bearer {token}"}) as c:
        answer = c.post(f"{server.tls_url}/v1/hosts/db2/events", json={"step": "install", "status": "start"})
    assert answer.status_code == 201 and answer.json()["state"] == "installing"
    samples = scrape(server.http_url)
    counts = store_counts(server)
    assert counts.get("installing", 0) >= 1
    for state in State:
        assert value(samples, "kiln_server_hosts", state=state.value) == counts.get(state.value, 0), state
    assert sum(value(samples, "kiln_server_hosts", state=s.value) for s in State) == 8
    assert value(samples, "kiln_server_hosts_stalest_change_timestamp_seconds", state="installing") > 0
    # one series per host, in its state: db2 is installing, every other host in the store is in its own state
    path = server.database.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        stored = dict(db.execute("SELECT name, state FROM hosts").fetchall())
    per_host = {
        dict(labels)["name"]: dict(labels)["state"] for name, labels in samples if name == "kiln_server_host_state"
    }
    assert per_host == stored and per_host["db2"] == "installing", per_host
    with server.client() as c:
        listed = c.get(f"{server.tls_url}/v1/hosts?timeline=0").json()["hosts"]
    for credential in ("armed", "enrolled", "spent", "expired"):
        expected = sum(1 for h in listed if h["credential"] == credential)
        assert value(samples, "kiln_server_host_credentials", credential=credential) == expected, credential
    assert value(samples, "kiln_server_generation") == 1
    assert value(samples, "kiln_server_store_up") == 1
    wanted = monitoring.EXPORTED["kiln server (kiln/server/metrics.py)"]  # what kiln's alert rules read
    assert set(wanted) <= {name for name, _ in samples}
    for certificate in ("ca", "server", "site"):
        assert value(samples, "kiln_server_certificate_expiry_timestamp_seconds", certificate=certificate) > 0


def test_healthz_answers_on_both_listeners(server: RunningServer) -> None:
    plain = httpx.get(f"{server.http_url}/healthz")
    assert plain.status_code == 200
    assert plain.json()["status"] == "ok" and plain.json()["generation"] == 1
    with server.client(operator=False) as anyone:
        assert anyone.get(f"{server.tls_url}/healthz").json()["status"] == "ok"
        assert anyone.get(f"{server.tls_url}/metrics").status_code == 200  # loopback: allowed


def _outside_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.200", 9))  # no packet is sent: this only picks the source address
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def test_metrics_only_for_the_admin_networks(tmp_path: Path) -> None:
    address = _outside_address()
    if address is None:
        pytest.skip("no non-loopback address to ask from")
    roles = loopback_roles(tmp_path)  # network.admin is 10.10.0.0/24: this machine's address is outside it
    with running_server(tmp_path / "outside", roles=roles, address="0.0.0.0") as s:
        port = urlsplit(s.http_url).port
        refused = httpx.get(f"http://{address}:{port}/metrics")
        assert refused.status_code == 403
        assert "admin networks" in refused.json()["error"]
        assert httpx.get(f"http://{address}:{port}/healthz").status_code == 200  # health is anyone's
        token = {"Authorization": f"Bearer {s.secrets.operator_token()}"}
        samples = scrape(f"http://{address}:{port}", headers=token)  # the operator may, from anywhere
        assert value(samples, "kiln_server_refusals_total", action="metrics", reason="not_admin_network") == 1
    admitted = loopback_roles(
        tmp_path, (tmp_path / "roles.yaml").read_text().replace("admin: [", f"admin: [{address}/32, ")
    )
    assert f"{address}/32" in admitted.read_text()
    with running_server(tmp_path / "inside", roles=admitted, address="0.0.0.0") as s:
        port = urlsplit(s.http_url).port
        assert value(scrape(f"http://{address}:{port}"), "kiln_server_store_up") == 1


def test_backup_age_and_allowance_follow_the_schedule_and_the_runners_reports(tmp_path: Path) -> None:
    """BackupTooOld's inputs, from the server: the schedule's longest gap (Mon..Fri: the weekend's 3 days) from the
    start, and the last success once the runner reports a backup."""
    text = (
        (PROJECT / "roles.yaml")
        .read_text()
        .replace(
            "  db:  {database: foobar}",
            "  db:\n    database: foobar\n"
            "    backup: {s3: {bucket: kiln-backups}, schedule: {backup: 'Mon..Fri 02:00'}}",
        )
    )
    assert "Mon..Fri" in text
    with running_server(tmp_path, roles=loopback_roles(tmp_path, text)) as server:
        samples = scrape(server.http_url)
        assert value(samples, "kiln_db_backup_interval_seconds", action="backup") == 3 * 86400
        assert not [k for k in samples if k[0] == "kiln_db_backup_last_success_timestamp_seconds"], "no backup yet"
        before = time.time()
        operator = Server(server.tls_url, server.secrets.ca_pem, server.secrets.root / "operator.token")
        assert report_backup(operator, MANIFEST)
        samples = scrape(server.http_url)
        last = value(samples, "kiln_db_backup_last_success_timestamp_seconds", action="backup")
        assert before - 5 <= last <= time.time() + 5
        wanted = monitoring.EXPORTED["kiln server, when roles.yaml sets db backups"]  # what BackupTooOld reads
        assert set(wanted) <= {name for name, _ in samples}


def test_without_backups_in_roles_yaml_nothing_is_said_of_them(server: RunningServer) -> None:
    names = {name for name, _ in scrape(server.http_url)}
    assert not {n for n in names if n.startswith("kiln_db_backup_")}, names
