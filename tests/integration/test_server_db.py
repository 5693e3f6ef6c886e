"""The data tier on the provisioning server (PUT /v1/db, POST /v1/db/events, GET /v1/db) over real HTTPS: only the
operator reports or reads, malformed reports change nothing, reports are kept and returned; and the reporting side
(kiln.db.report, topology.monitor's reporter) against that real server: a view and events arrive, an outage costs
the monitor nothing and is logged once, what waited is sent when the server is back."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from kiln.db import topology
from kiln.db.failover import Event
from kiln.db.replication import DbNode, Replication, Seen
from kiln.db.report import Observed, Reporter, backup_event, report_backup
from kiln.operator import Server
from kiln.server.dbreport import MAX_BODY_BYTES
from tests.integration.db_views import MANIFEST, PRIMARY, REPLICA
from tests.integration.kiln_server import RunningServer, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with running_server(tmp_path_factory.mktemp("serve")) as s:
        yield s


def operator_of(server: RunningServer, url: str | None = None) -> Server:
    return Server(url or server.tls_url, server.secrets.ca_pem, server.secrets.root / "operator.token")


def db(server: RunningServer) -> dict:
    with server.client() as c:
        answer = c.get(f"{server.tls_url}/v1/db")
    assert answer.status_code == 200, answer.text
    return answer.json()


def view(observed: float, *hosts: Seen) -> dict:
    return Observed(hosts, observed).payload()


def event(kind: str, host: str = "db2", **extra) -> dict:
    base = {"id": f"test-{kind}-{time.monotonic_ns()}", "kind": kind, "host": host, "message": "m", "at": time.time()}
    return {**base, **extra}


def test_only_the_operator_reports_or_reads(server: RunningServer) -> None:
    before = db(server)
    body = {"events": [event("failover")]}
    with server.client(operator=False) as anyone:
        assert anyone.get(f"{server.tls_url}/v1/db").status_code == 401
        assert anyone.put(f"{server.tls_url}/v1/db", json=view(time.time(), PRIMARY)).status_code == 401
        assert anyone.post(f"{server.tls_url}/v1/db/events", json=body).status_code == 401
    wrong = {"Authorization": "Bearer not-the-operator"}
    with server.client(operator=False, headers=wrong) as c:
        assert c.post(f"{server.tls_url}/v1/db/events", json=body).status_code == 401
    after = db(server)
    assert (after["view"], after["events"]) == (before["view"], before["events"])
    with server.client() as c:
        refused = c.get(f"{server.tls_url}/v1/access", params={"outcome": "refused"}).json()["access"]
    assert {"db", "db-view", "db-events"} <= {a["action"] for a in refused}, "every refusal is logged"


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/v1/db", {"observed": 1.0}, "'hosts' is a required property"),
        ("/v1/db", {"observed": 1.0, "hosts": [{**PRIMARY.summary(), "role": "boss"}]}, "role"),
        ("/v1/db", {"observed": 1.0, "hosts": [{**PRIMARY.summary(), "shell": "rm -rf /"}]}, "shell"),
        ("/v1/db", {"observed": 1.0, "hosts": [PRIMARY.summary()] * 2}, "listed twice"),
        (
            "/v1/db",
            {"observed": 1.0, "hosts": [{**REPLICA.summary(), "name": f"d{i}"} for i in range(65)]},
            "maxItems 64",
        ),
        ("/v1/db", {"observed": "now", "hosts": []}, "observed"),
        ("/v1/db/events", {"events": [event("reboot")]}, "kind"),
        ("/v1/db/events", {"events": []}, "events"),
        ("/v1/db/events", {"events": [event("backup")]}, "backup"),  # a backup event names its backup
        ("/v1/db/events", {"events": [event("failover", backup={"id": "x", "gtid": ""})]}, "events"),
        ("/v1/db/events", {"events": [{**event("failover"), "id": "x"}]}, "id"),
        ("/v1/db/events", {"events": [event("failover", host="h" * 65)]}, "host"),
        ("/v1/db/events", {"events": [event("failover")] * 101}, "maxItems 100"),
    ],
)
def test_malformed_reports_are_refused_and_change_nothing(server: RunningServer, path: str, body: dict, says: str):
    before = db(server)
    with server.client() as c:
        answer = c.request("PUT" if path == "/v1/db" else "POST", f"{server.tls_url}{path}", json=body)
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"], answer.json()
    after = db(server)
    assert (after["view"], after["events"], after["last_backup"]) == (
        before["view"],
        before["events"],
        before["last_backup"],
    )


def test_not_json_and_too_large_are_refused(server: RunningServer) -> None:
    with server.client() as c:
        text = c.put(f"{server.tls_url}/v1/db", content=b"{}", headers={"Content-Type": "text/plain"})
        assert text.status_code == 415
        big = json.dumps({"observed": 1, "hosts": [], "pad": "x" * MAX_BODY_BYTES}).encode()
        large = c.put(f"{server.tls_url}/v1/db", content=big, headers={"Content-Type": "application/json"})
        assert large.status_code == 413


def test_reports_are_stored_and_returned(server: RunningServer) -> None:
    now = time.time()
    with server.client() as c:
        assert c.put(f"{server.tls_url}/v1/db", json=view(now, PRIMARY, REPLICA)).status_code == 204
        late = view(now - 60, Seen("db1", "10.10.0.41", answered=False, error="gone"))
        assert c.put(f"{server.tls_url}/v1/db", json=late).status_code == 204  # older: it does not replace the view
        failover = event("failover", "db2", message="promoted: db1 out of sight 10.2s")
        rejoin = event("rejoin", "db1")
        assert c.post(f"{server.tls_url}/v1/db/events", json={"events": [failover, rejoin]}).json() == {"added": 2}
        again = c.post(f"{server.tls_url}/v1/db/events", json={"events": [failover]})
        assert again.status_code == 201 and again.json() == {"added": 0}, "a resent event is kept once"
    report_backup(operator_of(server), MANIFEST)
    answer = db(server)
    assert answer["db_hosts"] == ["db1", "db2"]
    assert answer["view"]["observed"] == now
    assert [(h["name"], h["role"], h["gtid"], h["follows"], h["lag"]) for h in answer["view"]["hosts"]] == [
        ("db1", "primary", "0-2-1187", "", None),
        ("db2", "replica", "0-2-1185", "10.10.0.41", 3),
    ]
    kinds = [(e["kind"], e["host"]) for e in answer["events"][:3]]
    assert kinds == [("backup", "db2"), ("rejoin", "db1"), ("failover", "db2")]
    backup = answer["last_backup"]
    assert (backup["id"], backup["gtid"], backup["stored_bytes"], backup["host"]) == (
        "20261201T110000Z-db2",
        "0-1-1150",
        1_677_722,
        "db2",
    )
    alerts = [a for a in answer["alerts"] if a["message"] == "promoted: db1 out of sight 10.2s"]
    assert len(alerts) == 1 and "db_role" in alerts[0]["hint"]
    assert {a["kind"] for a in answer["alerts"]} <= {"failover", "fence", "errant", "refused", "switchover"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_reporter_sends_a_view_and_events_to_the_server(server: RunningServer) -> None:
    reporter = Reporter(operator_of(server))
    at = time.time()
    reporter(Observed([PRIMARY, REPLICA], at), [Event("switchover", "db2", "promoted from db1 at 0-2-1187")])
    assert reporter.close(10), "everything sent"
    answer = db(server)
    assert answer["view"]["observed"] == at and [h["role"] for h in answer["view"]["hosts"]] == ["primary", "replica"]
    assert answer["events"][0]["kind"] == "switchover" and answer["events"][0]["message"].startswith("promoted from")


def test_an_outage_costs_the_monitor_nothing_is_logged_once_and_what_waited_arrives_later(
    server: RunningServer,
) -> None:
    said: list[str] = []
    reporter = Reporter(operator_of(server, f"https://127.0.0.1:{closed_port()}"), retry=0.2, log=said.append)
    started = time.monotonic()
    for i in range(20):
        newest = time.time()
        reporter(Observed([PRIMARY], newest), [Event("fence", "db1", f"outage event {i}")])
    assert time.monotonic() - started < 0.5, "handing a report over never waits for the server"
    deadline = time.monotonic() + 10
    while not reporter.down and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # several more tries fail meanwhile
    assert reporter.down and len(said) == 1 and "cannot reach" in said[0], said
    reporter.server = operator_of(server)  # the server is back
    deadline = time.monotonic() + 10
    while reporter.down and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not reporter.down and len(said) == 2 and "takes reports again" in said[1], said
    assert reporter.close(10)
    answer = db(server)
    messages = [e["message"] for e in answer["events"]]
    assert all(f"outage event {i}" in messages for i in range(20)), "every event that waited arrived"
    assert answer["view"]["observed"] == newest, "the newest view is what waited"


def test_the_monitor_reports_its_view_and_events_through_the_reporter(server: RunningServer, tmp_path: Path) -> None:
    """topology.monitor with db hosts that do not answer (closed ports): it sees them unreachable, says it waits,
    and the server has both; a dead server would cost it nothing (the previous test)."""
    r = Replication(
        [DbNode("db1", "127.0.0.1", closed_port()), DbNode("db2", "127.0.0.1", closed_port())],
        password="x",
        replication_user="repl",
        replication_password="y",
    )
    reporter = Reporter(operator_of(server))
    stopping = threading.Event()
    thread = threading.Thread(target=topology.monitor, args=(tmp_path, r, stopping, reporter), daemon=True)
    marker = time.time()
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            answer = db(server)
            waiting = [e for e in answer["events"] if e["kind"] == "waiting" and e["at"] >= marker]
            if waiting and answer["view"]["observed"] >= marker:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no view and event from the monitor: {answer}")
    finally:
        stopping.set()
        thread.join(10)
        reporter.close()
        r.close()
    assert [(h["name"], h["role"], h["answered"]) for h in answer["view"]["hosts"]] == [
        ("db1", "unreachable", False),
        ("db2", "unreachable", False),
    ]
    assert "Can't connect" in answer["view"]["hosts"][0]["error"]
    assert waiting[0]["message"] == "no db host is writable and none is followed"
    assert json.loads((tmp_path / "db-events.jsonl").read_text().splitlines()[0])["kind"] == "waiting"


def test_a_backup_report_to_no_server_is_said_and_not_raised(server: RunningServer) -> None:
    said: list[str] = []
    dead = operator_of(server, f"https://127.0.0.1:{closed_port()}")
    assert report_backup(dead, MANIFEST, said.append) is False
    assert len(said) == 1 and "not reported" in said[0]
    assert backup_event(MANIFEST)["backup"]["id"] == MANIFEST["id"]
