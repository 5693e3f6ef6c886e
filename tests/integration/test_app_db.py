"""The demo app (kilnapp) against a real MariaDB: a worker keeps one connection per database server, a connection
the server dropped is opened again, and /health answers from a result at most a second old."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kilnapp.config import Config
from kilnapp.wsgi import HEALTH_FRESH, make_app
from tests.integration.agent_mariadb import Mariadb, free_port, start, template_datadir
from tests.unit.test_agent_app import call

pytestmark = pytest.mark.integration
PASSWORD = "app-secret"
CNF = "[mysqld]\nbind_address = 127.0.0.1\nport = 3306\nsecure_file_priv = /nonexistent\n"


@pytest.fixture(scope="module")
def mariadb() -> Iterator[Mariadb]:
    base = Path(tempfile.mkdtemp(prefix="kiln-app-db-"))
    server = start("app-db", base, template_datadir(base), CNF)
    try:
        server.root().execute(
            "CREATE DATABASE foobar; "
            f"CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
            "GRANT ALL ON foobar.* TO 'app'@'127.0.0.1'"
        )
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def app_on(server: Mariadb, tmp_path: Path, clock: Any = None) -> Any:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    env = {
        "KILN_HOST": "app1",
        "KILN_DB_PASSWORD_FILE": str(tmp_path / "pw"),
        "KILN_DB_WRITE_HOST": "127.0.0.1",
        "KILN_DB_PORT": str(server.port),
        "KILN_DB_NAME": "foobar",
    }
    return make_app(Config.from_env(env), **({"clock": clock} if clock else {}))


def connections_opened(server: Mariadb) -> int:
    """MariaDB's count of connections ever accepted, each look counting itself: between two looks, the second one
    and whatever others connected."""
    sql = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'CONNECTIONS'"
    return int(server.root().value(sql))


def drop_app_connections(server: Mariadb) -> int:
    ids = [row[0] for row in server.root().rows("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'app'")]
    if ids:
        server.root().execute("; ".join(f"KILL {i}" for i in ids))
    return len(ids)


def test_a_worker_keeps_one_connection_to_the_database(mariadb: Mariadb, tmp_path: Path) -> None:
    clock = [0.0]
    app = app_on(mariadb, tmp_path, clock=lambda: clock[0])
    before = connections_opened(mariadb)
    for i in range(10):
        clock[0] += 2 * HEALTH_FRESH  # every /health asks the database
        assert call(app, "GET", "/health")[0].startswith("200")
        assert call(app, "GET", "/")[0].startswith("200")
        assert call(app, "POST", "/api/notes", json.dumps({"text": f"note {i}"}).encode())[0].startswith("201")
    status, _, body = call(app, "GET", "/api/notes")
    assert status.startswith("200") and len(json.loads(body)["notes"]) == 10
    # 31 requests, 40 statements: one handshake (it was one per request, three for the page)
    assert connections_opened(mariadb) - before - 1 == 1


def test_a_connection_the_server_dropped_is_opened_again(mariadb: Mariadb, tmp_path: Path) -> None:
    app = app_on(mariadb, tmp_path)
    assert call(app, "GET", "/")[0].startswith("200")
    assert drop_app_connections(mariadb) >= 1
    before = connections_opened(mariadb)
    status, _, body = call(app, "POST", "/api/notes", b'{"text": "after the drop"}')
    assert status.startswith("201"), body
    assert connections_opened(mariadb) - before - 1 == 1


def test_health_answers_from_a_result_at_most_a_second_old(mariadb: Mariadb, tmp_path: Path) -> None:
    clock = [100.0]
    app = app_on(mariadb, tmp_path, clock=lambda: clock[0])
    assert call(app, "GET", "/health")[0].startswith("200")
    root = mariadb.root()
    root.execute(f"ALTER USER 'app'@'127.0.0.1' IDENTIFIED BY 'changed-{PASSWORD}'")
    try:
        drop_app_connections(mariadb)  # the next look at the database must log in again, and cannot
        clock[0] += HEALTH_FRESH / 2
        assert call(app, "GET", "/health")[0].startswith("200"), "half a second old: given again"
        clock[0] += HEALTH_FRESH
        status, _, body = call(app, "GET", "/health")
        assert status.startswith("503") and json.loads(body)["db"] == "OperationalError"
    finally:
        root.execute(f"ALTER USER 'app'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'")
    clock[0] += HEALTH_FRESH / 2
    assert call(app, "GET", "/health")[0].startswith("503"), "a failure is given again for as long"
    clock[0] += HEALTH_FRESH
    assert call(app, "GET", "/health")[0].startswith("200")


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Mariadb, Mariadb]]:
    """Two servers on one port at 127.0.0.2 and 127.0.0.3 (as db hosts share 3306 at their own addresses), each
    with the app's database and account; the first writable, the second read-only."""
    base = Path(tempfile.mkdtemp(prefix="kiln-app-pair-"))
    template = template_datadir(base)
    port = free_port()
    servers = []
    try:
        for i, read_only in ((2, "OFF"), (3, "ON")):
            cnf = "[mysqld]\nbind_address = x\nport = 0\nsecure_file_priv = /nonexistent\nskip_name_resolve = ON\n"
            cnf += f"read_only = {read_only}\n"
            server = start(f"db{i}", base, template, cnf, address=(f"127.0.0.{i}", port))
            servers.append(server)
            server.root().execute(
                "CREATE DATABASE foobar; "
                f"CREATE USER 'app'@'127.%' IDENTIFIED BY '{PASSWORD}'; "
                "GRANT ALL ON foobar.* TO 'app'@'127.%'"
            )
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _pair_app(pair: tuple[Mariadb, Mariadb], tmp_path: Path) -> Any:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    env = {
        "KILN_HOST": "app1",
        "KILN_DB_PASSWORD_FILE": str(tmp_path / "pw"),
        "KILN_DB_WRITE_HOST": "127.0.0.2",
        "KILN_DB_READ_HOST": "127.0.0.3",
        "KILN_DB_HOSTS": "127.0.0.2,127.0.0.3",
        "KILN_DB_PORT": str(pair[0].port),
        "KILN_DB_NAME": "foobar",
    }
    return make_app(Config.from_env(env))


def _read_only(server: Mariadb, on: bool) -> None:
    server.root().execute(f"SET GLOBAL read_only = {'ON' if on else 'OFF'}")


def _note(app: Any, text: str) -> tuple[str, dict]:
    status, _, body = call(app, "POST", "/api/notes", json.dumps({"text": text}).encode())
    return status, json.loads(body)


def test_writes_follow_the_writable_server_and_stop_when_none_or_two_are(
    pair: tuple[Mariadb, Mariadb], tmp_path: Path
) -> None:
    """After a failover (the old primary read-only, a replica writable) the app's next write lands on the new
    primary, with no reconfiguration and no failed request; with no writable server, or two (a split brain), no
    write goes anywhere and /health says so."""
    first, second = pair
    app = _pair_app(pair, tmp_path)
    status, note = _note(app, "before")
    assert status.startswith("201") and note["db"] == "127.0.0.2", note
    page = call(app, "GET", "/")[2].decode()
    assert "writes go to the primary" in page and "(127.0.0.2," in page
    _read_only(first, True)  # the failover: the old primary refuses writes, the replica takes them
    _read_only(second, False)
    try:
        status, note = _note(app, "after the failover")
        assert status.startswith("201") and note["db"] == "127.0.0.3", note
        assert second.root().value("SELECT text FROM foobar.notes ORDER BY id DESC LIMIT 1") == "after the failover"
        assert first.root().value("SELECT COUNT(*) FROM foobar.notes WHERE text = 'after the failover'") == "0"

        _read_only(second, True)  # nobody writable: refused, nothing written
        status, body = _note(app, "nowhere")
        assert status.startswith("503") and body["error"] == "database: NoWriter", body
        health = json.loads(call(_pair_app(pair, tmp_path), "GET", "/health")[2])
        assert health["status"] == "fail" and health["db"] == "NoWriter"

        _read_only(first, False)  # two writable: a split brain; a fresh worker writes to neither
        _read_only(second, False)
        status, body = _note(_pair_app(pair, tmp_path), "split")
        assert status.startswith("503") and body["error"] == "database: NoWriter", body
        for server in pair:
            assert server.root().value("SELECT COUNT(*) FROM foobar.notes WHERE text IN ('nowhere', 'split')") == "0"
    finally:
        _read_only(first, False)
        _read_only(second, True)
