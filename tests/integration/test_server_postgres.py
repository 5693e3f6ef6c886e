"""The server's PostgreSQL state path, against Debian's PostgreSQL in a cluster this test owns (initdb in a
temp dir, loopback port): two server instances share one database, as behind a load balancer, and the
one-time secrets rule and `./inv reprovision` hold across them."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kiln.db.failover import Event
from kiln.db.report import Observed, backup_event, event_payload
from kiln.run import run
from kiln.server.alerts import Alert
from kiln.server.store import StateStore, alerts_table
from tests.integration.db_views import MANIFEST, PRIMARY, REPLICA
from tests.integration.kiln_server import INV, loopback_roles, running_server
from tests.webhook import alert, notification

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/usr/lib/postgresql").is_dir(), reason="needs Debian's postgresql package"),
]

PASSWORD = "kiln-test-pw-7Q2"


def _pg_bin() -> Path:
    return sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Postgres:
    url: str
    pg_ctl: list[str | Path]  # pg_ctl as the postgres user, with the data directory

    def stop(self) -> None:
        run([*self.pg_ctl, "-m", "immediate", "-w", "stop"], check=False, timeout=60)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster run as the postgres user, listening on 127.0.0.1 only."""
    bin_dir = _pg_bin()
    top = Path(tempfile.mkdtemp(prefix="kiln-srv-pg-"))
    data, sockets, pwfile = top / "data", top / "sock", top / "pw"
    sockets.mkdir()
    pwfile.write_text(PASSWORD + "\n")
    shutil.chown(top, "postgres", "postgres")
    shutil.chown(sockets, "postgres", "postgres")
    shutil.chown(pwfile, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    run(
        [
            *as_pg,
            bin_dir / "initdb",
            "--no-sync",
            "-D",
            data,
            "-U",
            "kiln",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
        ],
        timeout=120,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off"
    pg_ctl: list[str | Path] = [*as_pg, bin_dir / "pg_ctl", "-D", data]
    run([*pg_ctl, "-l", top / "log", "-o", options, "-w", "start"], timeout=60)
    try:
        yield Postgres(f"postgresql://kiln:{PASSWORD}@127.0.0.1:{port}/postgres", pg_ctl)
    finally:
        run([*pg_ctl, "-m", "immediate", "-w", "stop"], check=False, timeout=60)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres: Postgres) -> str:
    return postgres.url


def test_two_servers_share_state_in_postgresql(postgres_url: str, tmp_path: Path) -> None:
    roles = loopback_roles(tmp_path)
    secrets = tmp_path / "secrets"
    with (
        running_server(tmp_path / "a", roles=roles, database=postgres_url, secrets=secrets) as a,
        running_server(tmp_path / "b", roles=roles, database=postgres_url, secrets=secrets) as b,
    ):
        assert PASSWORD not in a.output() and "kiln:***@127.0.0.1" in a.output()  # the banner hides the password

        token = a.token("db1")
        installer = {"Authorization": f"Bearer {token}"}
        with a.client(operator=False, headers=installer) as ca, b.client(operator=False, headers=installer) as cb:
            assert ca.post(f"{a.tls_url}/v1/hosts/db1/events", json={"step": "install", "status": "start"}).is_success
            assert cb.post(f"{b.tls_url}/v1/hosts/db1/events", json={"step": "install", "status": "ok"}).is_success
        # enrolled through one instance, the host's key is known to the other: one credential, one state
        db1 = a.host("db1", "52:54:00:10:00:41")
        assert db1.enrol(token).status_code == 200
        db1.server = b
        first = json.loads(db1.bundle().content)
        assert first["secrets_withheld"] is False and all(s["value"] for s in first["secrets"])
        assert db1.event("secrets", "ok").status_code == 201  # acknowledged through b ...
        db1.server = a
        second = json.loads(db1.bundle().content)
        assert second["secrets_withheld"] is True  # ... and a knows it
        with a.client() as ca:
            view = next(h for h in ca.get(f"{a.tls_url}/v1/hosts").json()["hosts"] if h["name"] == "db1")
        steps = [(e["step"], e["status"]) for e in view["timeline"]]
        assert steps == [("install", "start"), ("install", "ok"), ("secrets", "ok")]
        assert view["installed"] and "db1 asked for its secrets again after it acknowledged them" in [
            x["message"] for x in view["alerts"]
        ]

        # as docs/server.md says: the password from PGPASSWORD, not the URL
        no_password = postgres_url.replace(f":{PASSWORD}@", "@")
        done = subprocess.run(
            [*INV, "reprovision", "db1", "--force", "--roles", str(roles), "--database", no_password],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PGPASSWORD": PASSWORD},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with b.client() as cb:
            view = next(h for h in cb.get(f"{b.tls_url}/v1/hosts").json()["hosts"] if h["name"] == "db1")
        again = json.loads(b.host("db1", "52:54:00:10:00:41").enrol(b.token("db1")).content)
        assert view["state"] == "waiting" and view["alerts"] == [] and not view["installed"]
        assert again["secrets_withheld"] is False


def test_two_servers_agree_on_the_data_tier(postgres_url: str, tmp_path: Path) -> None:
    """The monitor's reports may reach either server behind a load balancer: the newest view wins, an event resent
    through the other server is kept once, and both answer the same."""
    roles = loopback_roles(tmp_path)
    secrets = tmp_path / "secrets"
    with (
        running_server(tmp_path / "a", roles=roles, database=postgres_url, secrets=secrets) as a,
        running_server(tmp_path / "b", roles=roles, database=postgres_url, secrets=secrets) as b,
        a.client() as ca,
        b.client() as cb,
    ):
        newer = Observed([PRIMARY, REPLICA], 2000.0).payload()
        older = Observed([REPLICA], 1000.0).payload()
        assert cb.put(f"{b.tls_url}/v1/db", json=newer).status_code == 204
        assert ca.put(f"{a.tls_url}/v1/db", json=older).status_code == 204
        failover = event_payload(Event("failover", "db2", "promoted"))
        assert ca.post(f"{a.tls_url}/v1/db/events", json={"events": [failover]}).json() == {"added": 1}
        assert cb.post(f"{b.tls_url}/v1/db/events", json={"events": [failover]}).json() == {"added": 0}
        assert cb.post(f"{b.tls_url}/v1/db/events", json={"events": [backup_event(MANIFEST)]}).status_code == 201
        answers = [c.get(f"{s.tls_url}/v1/db").json() for c, s in ((ca, a), (cb, b))]
        for answer in answers:
            assert answer["view"]["observed"] == 2000.0 and len(answer["view"]["hosts"]) == 2
            assert [e["kind"] for e in answer["events"]] == ["backup", "failover"]
            assert answer["last_backup"]["id"] == MANIFEST["id"]
            assert [a["message"] for a in answer["alerts"]] == ["promoted"]
        assert answers[0]["events"] == answers[1]["events"]


def test_two_servers_agree_on_the_alerts(postgres_url: str, tmp_path: Path) -> None:
    """Alertmanager's notifications may reach either server behind a load balancer: an alert fired through one and
    resolved through the other is resolved on both, and a late firing resend changes nothing."""
    roles = loopback_roles(tmp_path)
    secrets = tmp_path / "secrets"
    with (
        running_server(tmp_path / "a", roles=roles, database=postgres_url, secrets=secrets) as a,
        running_server(tmp_path / "b", roles=roles, database=postgres_url, secrets=secrets) as b,
    ):
        token = {"Authorization": f"Bearer {a.secrets.alertmanager_token()}"}
        down, full = alert(fingerprint="a" * 16), alert("DiskAlmostFull", "db1", fingerprint="b" * 16)
        gone = {**down, "status": "resolved", "endsAt": "2026-12-01T18:05:00Z"}
        with a.client(operator=False, headers=token) as ca, b.client(operator=False, headers=token) as cb:
            assert ca.post(f"{a.tls_url}/v1/alerts", json=notification(down, full)).json()["changed"] == 2
            assert cb.post(f"{b.tls_url}/v1/alerts", json=notification(gone)).json()["changed"] == 1
            assert ca.post(f"{a.tls_url}/v1/alerts", json=notification(down)).json()["changed"] == 0
        with a.client() as ca, b.client() as cb:
            answers = [c.get(f"{s.tls_url}/v1/alerts").json() for c, s in ((ca, a), (cb, b))]
        for answer in answers:
            assert [x["alertname"] for x in answer["firing"]] == ["DiskAlmostFull"]
            assert [x["alertname"] for x in answer["resolved"]] == ["InstanceDown"]
        assert answers[0]["firing"] == answers[1]["firing"]


def test_an_alert_another_server_inserts_meanwhile_is_updated_not_a_conflict(postgres_url: str, tmp_path: Path) -> None:
    """Two servers told of the same new alert at once: the second waits for the first's row and then updates it (a
    plain insert would fail on the fingerprint's unique key, and Alertmanager would see a 500)."""
    ours, theirs = StateStore.open(postgres_url, tmp_path), StateStore.open(postgres_url, tmp_path)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        conn = theirs.engine.connect()
        transaction = conn.begin()
        row = {"fingerprint": "d" * 16, "status": "firing", "starts_at": 100.0, "labels": "{}", "annotations": "{}"}
        conn.execute(alerts_table.insert().values(**row, received=1.0, updated=1.0))
        resolved = Alert("d" * 16, "resolved", {"alertname": "X"}, {}, 100.0, 160.0)
        later = pool.submit(ours.record_alerts, [resolved], now=5.0)
        time.sleep(0.5)
        assert not later.done(), "it waits for the other server's uncommitted row"
        transaction.commit()
        conn.close()
        assert later.result(timeout=10) == 1
        [stored] = [r for r in ours.alert_list()["resolved"] if r["fingerprint"] == "d" * 16]
        assert (stored["fingerprint"], stored["received"], stored["ends_at"]) == ("d" * 16, 1.0, 160.0)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        ours.close()
        theirs.close()


def test_healthz_says_when_the_database_does_not_answer(postgres: Postgres, tmp_path: Path) -> None:
    """Last in this module: it stops the database."""
    with running_server(tmp_path / "health", database=postgres.url) as s:
        assert httpx.get(f"{s.http_url}/healthz").json()["status"] == "ok"
        postgres.stop()
        down = httpx.get(f"{s.http_url}/healthz", timeout=30)
        assert down.status_code == 503 and down.json()["status"] == "unavailable"
        assert PASSWORD not in down.text
        scraped = httpx.get(f"{s.http_url}/metrics", timeout=30)
        assert scraped.status_code == 200  # the scrape still answers, and says the store did not
        assert "kiln_server_store_up 0.0" in scraped.text
        assert "kiln_server_hosts{" not in scraped.text
