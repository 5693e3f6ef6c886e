"""The db joins, for real: a MariaDB primary and GTID replicas on loopback, joined by `firstboot apply --only join`.

A replica of an empty primary follows it from the start of its binary log; a replica of a primary that
already holds rows seeds from a consistent dump first. Rows written on the primary show on the replicas,
replicas are read-only, and a second join changes nothing (the binary logs do not move).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymysql
import pytest

from firstboot.errors import StepFailed
from firstboot.steps.join import db as db_join
from firstboot.steps.join.sql import Server
from kiln import monitoring
from kiln.bundle import Bundle, DbPrimaryJoin, DbReplicaJoin
from kiln.model import Cluster
from kiln.secrets import SecretStore
from tests.integration.agent_mariadb import Mariadb, start, template_datadir
from tests.integration.hostroot import applied_bundles

pytestmark = pytest.mark.integration
CNF = "/etc/mysql/mariadb.conf.d/60-kiln.cnf"


@pytest.fixture(scope="module")
def bundles(cluster: Cluster, secret_store: SecretStore) -> dict[str, Bundle]:
    return applied_bundles(cluster, secret_store)


def cnf_of(bundle: Bundle) -> str:
    return next(f.content for f in bundle.files if f.path == CNF)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    # not under pytest's 0700 tmp root: the exporter runs as the OS user prometheus and must reach the sockets
    directory = Path(tempfile.mkdtemp(prefix="kiln-agt-db-"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def template(base: Path) -> Iterator[Path]:
    datadir = template_datadir(base)
    yield datadir
    shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Mariadb]]:
    started: list[Mariadb] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def primary(base: Path, template: Path, bundles: dict[str, Bundle], servers: list[Mariadb]) -> Mariadb:
    server = start("db1", base, template, cnf_of(bundles["db1"]))
    servers.append(server)
    return server


def loopback_bundle(bundle: Bundle, primary: Mariadb, **changes: Any) -> Bundle:
    """The rendered bundle with every peer address on loopback (the servers here all live on 127.0.0.1)."""
    spec = bundle.join
    if isinstance(spec, DbPrimaryJoin):
        spec = replace(spec, port=primary.port, replica_hosts=("127.0.0.1",), app_hosts=("127.0.0.1",))
    else:
        assert isinstance(spec, DbReplicaJoin)
        spec = replace(spec, port=primary.port, primary="127.0.0.1", wait_seconds=20)
    return replace(bundle, join=replace(spec, **changes))


def apply_join(bundle: Bundle, server: Mariadb, root: Path) -> subprocess.CompletedProcess[str]:
    """`firstboot apply --only secrets,join` against `server`, as the agent runs it (secrets read from disk)."""
    root.mkdir(exist_ok=True)
    path = root.parent / f"{root.name}.bundle.json"
    path.write_bytes(bundle.to_json())
    argv = ["apply", "--bundle", str(path), "--root", str(root), "--only", "secrets,join", "--db-socket", server.socket]
    return subprocess.run(
        [sys.executable, "-m", "firstboot", *argv], capture_output=True, text=True, timeout=120, check=False
    )


def join(bundle: Bundle, server: Mariadb, root: Path) -> subprocess.CompletedProcess[str]:
    result = apply_join(bundle, server, root)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def as_app(server: Mariadb, password: str, sql: str, database: str = "foobar") -> Any:
    conn = pymysql.connect(
        host="127.0.0.1", port=server.port, user="app", password=password, database=database, autocommit=True
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def wait_rows(server: Server, sql: str, want: str, seconds: float = 10) -> str:
    import time

    deadline = time.monotonic() + seconds
    while True:
        got = server.value(sql)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_primary_join_sets_up_users_hardens_and_is_idempotent(
    primary: Mariadb, bundles: dict[str, Bundle], base: Path, secret_store: SecretStore
) -> None:
    db = primary.root()
    assert db.value("SELECT COUNT(*) FROM mysql.user WHERE User = ''") != "0"  # the fresh install has anonymous users
    bundle = loopback_bundle(bundles["db1"], primary)
    first = join(bundle, primary, base / "db1-root")
    assert "changes" in first.stdout
    users = {tuple(r) for r in db.rows("SELECT User, Host FROM mysql.user")}
    assert ("repl", "127.0.0.1") in users and ("app", "127.0.0.1") in users
    assert db.value("SELECT plugin FROM mysql.user WHERE User = 'prometheus' AND Host = 'localhost'") == "unix_socket"
    assert not [u for u in users if u[0] == ""]  # no anonymous users
    assert not [u for u in users if u[0] == "root" and u[1] not in ("localhost", "127.0.0.1", "::1")]
    assert db.value("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'test'") == "0"
    assert db.value("SELECT @@log_bin") == "1" and db.value("SELECT @@gtid_strict_mode") == "1"
    password = secret_store.value("db_app_password")
    assert as_app(primary, password, "SELECT DATABASE()") == (("foobar",),)
    with pytest.raises(pymysql.err.OperationalError):  # the app user reaches its database only
        as_app(primary, password, "SELECT 1", database="mysql")
    position = db.value("SELECT @@gtid_binlog_pos")
    second = join(bundle, primary, base / "db1-root")
    assert "primary unchanged" in second.stdout
    assert db.value("SELECT @@gtid_binlog_pos") == position  # nothing written: not even a no-op GRANT


def test_replica_of_an_empty_primary_follows_it(
    primary: Mariadb,
    bundles: dict[str, Bundle],
    base: Path,
    template: Path,
    servers: list[Mariadb],
    secret_store: SecretStore,
) -> None:
    replica = start("db2", base, template, cnf_of(bundles["db2"]))
    servers.append(replica)
    out = join(loopback_bundle(bundles["db2"], primary), replica, base / "db2-root")
    assert "following it from the start of its binary log" in out.stderr
    r = replica.root()
    status = r.status("SHOW SLAVE STATUS")
    assert (status["Slave_IO_Running"], status["Slave_SQL_Running"], status["Using_Gtid"]) == (
        "Yes",
        "Yes",
        "Slave_Pos",
    )
    assert r.value("SELECT @@read_only") == "1"
    # the exporter's account came over with replication (created on a replica it would break replication)
    assert r.value("SELECT plugin FROM mysql.user WHERE User = 'prometheus' AND Host = 'localhost'") == "unix_socket"
    password = secret_store.value("db_app_password")
    as_app(primary, password, "CREATE TABLE notes (id INT PRIMARY KEY, text VARCHAR(50))")
    as_app(primary, password, "INSERT INTO notes VALUES (1, 'written on the primary')")
    assert (
        wait_rows(r, "SELECT text FROM foobar.notes WHERE id = 1", "written on the primary") == "written on the primary"
    )
    with pytest.raises(pymysql.err.OperationalError, match="read-only|read_only|1290"):
        as_app(replica, password, "INSERT INTO notes VALUES (2, 'written on the replica')")
    before = (
        r.value("SELECT @@gtid_slave_pos"),
        r.value("SELECT @@gtid_binlog_pos"),
        primary.root().value("SELECT @@gtid_binlog_pos"),
    )
    again = join(loopback_bundle(bundles["db2"], primary), replica, base / "db2-root").stdout
    assert "replica unchanged" in again
    assert (
        r.value("SELECT @@gtid_slave_pos"),
        r.value("SELECT @@gtid_binlog_pos"),
        primary.root().value("SELECT @@gtid_binlog_pos"),
    ) == before


def test_replica_of_a_primary_with_rows_seeds_from_it(
    primary: Mariadb,
    bundles: dict[str, Bundle],
    base: Path,
    template: Path,
    servers: list[Mariadb],
    secret_store: SecretStore,
) -> None:
    password = secret_store.value("db_app_password")
    as_app(primary, password, "CREATE TABLE IF NOT EXISTS bulk (id INT PRIMARY KEY, v VARCHAR(20))")
    values = ",".join(f"({i}, 'row {i}')" for i in range(1, 2001))
    as_app(primary, password, f"INSERT INTO bulk VALUES {values}")
    bundle = loopback_bundle(bundles["db2"], primary, server_id=3)
    bundle = replace(bundle, host=replace(bundle.host, name="db3"))
    cnf = cnf_of(bundles["db2"]).replace("server_id = ", "server_id = 3\n# was ")
    replica = start("db3", base, template, cnf)
    servers.append(replica)
    out = join(bundle, replica, base / "db3-root")
    assert "seeded from the primary at GTID" in out.stderr
    r = replica.root()
    assert r.value("SELECT COUNT(*) FROM foobar.bulk") == "2000"
    as_app(primary, password, "INSERT INTO bulk VALUES (2001, 'after the seed')")
    assert wait_rows(r, "SELECT COUNT(*) FROM foobar.bulk", "2001") == "2001"
    status = r.status("SHOW SLAVE STATUS")
    assert status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes"
    assert status["Seconds_Behind_Master"] not in ("", "NULL")
    assert r.value("SELECT @@read_only") == "1"


def test_a_replica_whose_server_id_another_follows_with_is_refused(
    primary: Mariadb, bundles: dict[str, Bundle], base: Path, template: Path, servers: list[Mariadb]
) -> None:
    """db3 (above) follows the primary with server_id 3; a new replica rendered with the same id is refused before
    it touches replication, naming the one that has it (two such replicas kick each other off: errno 4052)."""
    bundle = loopback_bundle(bundles["db2"], primary, server_id=3)
    bundle = replace(bundle, host=replace(bundle.host, name="db5"))
    cnf = cnf_of(bundles["db2"]).replace("server_id = ", "server_id = 3\n# was ")
    replica = start("db5", base, template, cnf.replace("report_host = 10.10.0.42", "report_host = 10.10.0.45"))
    servers.append(replica)
    result = apply_join(bundle, replica, base / "db5-root")
    assert result.returncode == 1, result.stdout
    assert "server_id 3 is already used by 10.10.0.42, which follows the primary" in result.stdout
    assert "hosts[].server_id" in result.stdout  # the next action
    assert replica.root().status("SHOW SLAVE STATUS") == {}, "nothing of replication was set up"


def test_a_replica_waits_bounded_for_its_primary_and_says_so(
    bundles: dict[str, Bundle], base: Path, template: Path, servers: list[Mariadb]
) -> None:
    from tests.integration.agent_mariadb import free_port

    replica = start("db4", base, template, cnf_of(bundles["db2"]).replace("server_id = ", "server_id = 4\n# was "))
    servers.append(replica)
    spec = bundles["db2"].join
    assert isinstance(spec, DbReplicaJoin)
    nobody = replace(spec, primary="127.0.0.1", port=free_port(), wait_seconds=2)  # nobody listens there
    result = apply_join(replace(bundles["db2"], join=nobody), replica, base / "db4-root")
    assert result.returncode == 1
    assert "did not answer within 2s" in result.stdout
    assert "firstboot run" in result.stdout  # the next action
    assert "retrying in" in result.stderr  # every retry logged with its reason


def exporter_metrics(bundle: Bundle, server: Mariadb, port: int) -> str:
    """The Debian exporter, as its unit runs it (OS user prometheus, the rendered default file), against `server`."""
    default = next(f.content for f in bundle.files if f.path == "/etc/default/prometheus-mysqld-exporter")
    env = dict(re.findall(r'(?m)^([A-Z_]+)="(.*)"$', default))
    dsn = env["DATA_SOURCE_NAME"].replace("/run/mysqld/mysqld.sock", server.socket)
    args = re.sub(r"--web.listen-address=\S+", f"--web.listen-address=127.0.0.1:{port}", env["ARGS"]).split()
    process = subprocess.Popen(
        ["/usr/sbin/runuser", "-u", "prometheus", "--", "/usr/bin/prometheus-mysqld-exporter", *args],
        env={"DATA_SOURCE_NAME": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return response.read().decode()
            except OSError as e:
                if process.poll() is not None or time.monotonic() > deadline:
                    why = process.stderr.read() if process.stderr and process.poll() is not None else e
                    raise AssertionError(f"the exporter did not answer: {why}") from e
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(10)


def test_the_mysqld_exporter_logs_in_by_socket_on_primary_and_replica(
    primary: Mariadb, bundles: dict[str, Bundle], servers: list[Mariadb]
) -> None:
    from tests.integration.agent_mariadb import free_port

    metrics = exporter_metrics(bundles["db1"], primary, free_port())
    assert re.search(r"(?m)^mysql_up 1$", metrics), metrics[:2000]
    assert re.search(r"(?m)^mysql_global_status_uptime \d", metrics)
    replica = next(s for s in servers if s.name == "db2")
    metrics = exporter_metrics(bundles["db2"], replica, free_port())
    assert re.search(r"(?m)^mysql_up 1$", metrics), metrics[:2000]
    assert re.search(r"(?m)^mysql_slave_status_slave_sql_running\{.*\} 1$", metrics), "no replica status"
    # the names kiln's alert rules read (kiln/monitoring), as this exporter really exports them
    exported = set(re.findall(r"(?m)^([a-z_]+)[{ ]", metrics))
    wanted = set(monitoring.EXPORTED["prometheus-mysqld-exporter 0.14 (--collect.slave_status)"])
    assert wanted <= exported, sorted(wanted - exported)
    assert re.search(r"(?m)^mysql_global_variables_read_only 1$", metrics), "the replica is read-only"


def primary_notes(stderr: str) -> set[str]:
    return set(re.findall(r"db-primary: (.*)", stderr))


def test_a_primary_join_again_drops_and_creates_exactly_the_app_hosts_that_changed(
    primary: Mariadb, bundles: dict[str, Bundle], base: Path
) -> None:
    """A converge reruns the primary's join when roles.yaml gains and loses app hosts: one account goes, one
    comes, nothing else moves."""
    db = primary.root()
    before = loopback_bundle(bundles["db1"], primary, app_hosts=("127.0.0.1", "10.10.0.31"))
    join(before, primary, base / "db1-root")
    after = loopback_bundle(bundles["db1"], primary, app_hosts=("127.0.0.1", "10.10.0.32"))
    out = join(after, primary, base / "db1-root")
    notes = primary_notes(out.stderr)
    assert "drop app@10.10.0.31 (no longer in roles.yaml)" in notes and "create app@10.10.0.32" in notes
    assert notes - {"drop app@10.10.0.31 (no longer in roles.yaml)", "create app@10.10.0.32"} == {
        "grant ALTER, CREATE, DELETE, INDEX, INSERT, SELECT, UPDATE on `foobar`.* to app@10.10.0.32"
    }
    assert {r[0] for r in db.rows("SELECT Host FROM mysql.user WHERE User = 'app'")} == {"127.0.0.1", "10.10.0.32"}
    assert {r[0] for r in db.rows("SELECT Host FROM mysql.user WHERE User = 'repl'")} == {"127.0.0.1"}
    back = join(loopback_bundle(bundles["db1"], primary), primary, base / "db1-root")
    assert primary_notes(back.stderr) == {"drop app@10.10.0.32 (no longer in roles.yaml)"}


def test_a_converging_replica_follows_another_primary_without_reset_or_reseed(
    primary: Mariadb, bundles: dict[str, Bundle], servers: list[Mariadb], secret_store: SecretStore
) -> None:
    """db2 follows db1; roles.yaml now names db3 (a replica of db1 that logs what it applies) as its primary.
    While db3 is read-only, converge leaves db2 where it is (a read-only primary in roles.yaml is a failover or
    switchover roles.yaml has not caught up with). Once db3 is writable, converge re-points db2 where it stands:
    its binary log, its rows and its GTID position stay, no seed is taken, and what the first primary writes
    reaches it through the new one."""
    db2, db3 = (next(s for s in servers if s.name == n) for n in ("db2", "db3"))
    password = secret_store.value("db_app_password")
    as_app(primary, password, "CREATE TABLE IF NOT EXISTS chain (id INT PRIMARY KEY)")
    as_app(primary, password, "INSERT INTO chain VALUES (1)")
    r2, r3 = db2.root(), db3.root()
    for replica in (r2, r3):
        assert wait_rows(replica, "SELECT COUNT(*) FROM foobar.chain", "1") == "1"
    kept = (r2.value("SELECT @@gtid_binlog_pos"), r2.value("SELECT COUNT(*) FROM foobar.notes"))
    spec = loopback_bundle(bundles["db2"], primary).join
    assert isinstance(spec, DbReplicaJoin)
    spec = replace(spec, port=db3.port)
    out = db_join.join_replica(spec, secret_store.value, r2, repoint=True)
    assert "is read-only: set db_role to match ./inv db status" in out
    assert r2.status("SHOW SLAVE STATUS")["Master_Port"] == str(primary.port)
    r3.execute("SET GLOBAL read_only = OFF;\n")  # as if promoted, still applying what db1 sends
    try:
        out = db_join.join_replica(spec, secret_store.value, r2, repoint=True)
    finally:
        r3.execute("SET GLOBAL read_only = ON;\n")
    assert "replica 1 changes" in out
    status = r2.status("SHOW SLAVE STATUS")
    assert (status["Master_Port"], status["Using_Gtid"]) == (str(db3.port), "Slave_Pos")
    assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")
    assert (r2.value("SELECT @@gtid_binlog_pos"), r2.value("SELECT COUNT(*) FROM foobar.notes")) == kept
    as_app(primary, password, "INSERT INTO chain VALUES (2)")
    assert wait_rows(r2, "SELECT COUNT(*) FROM foobar.chain", "2") == "2"  # db1 -> db3 -> db2
    assert "replica unchanged" in db_join.join_replica(spec, secret_store.value, r2, repoint=True)
    # a server that never replicated is not made a replica by converge (that would reset it): the writable one is
    # taken for a primary promoted since roles.yaml was written, a read-only one is refused
    position = primary.root().value("SELECT @@gtid_binlog_pos")
    out = db_join.join_replica(spec, secret_store.value, primary.root(), repoint=True)
    assert out.startswith("not a replica: the writable primary since a failover or switchover")
    primary.root().execute("SET GLOBAL read_only = ON;\n")
    try:
        with pytest.raises(StepFailed, match="does not replicate yet, and converge never resets or seeds"):
            db_join.join_replica(spec, secret_store.value, primary.root(), repoint=True)
    finally:
        primary.root().execute("SET GLOBAL read_only = OFF;\n")
    assert primary.root().value("SELECT @@gtid_binlog_pos") == position
    assert primary.root().status("SHOW SLAVE STATUS") == {}


def test_commits_wait_for_a_replica_and_go_on_without_one_after_the_timeout(
    primary: Mariadb, bundles: dict[str, Bundle], base: Path, template: Path, servers: list[Mariadb]
) -> None:
    """Semi-sync (AFTER_SYNC): with its replica connected a commit is acknowledged only once the replica has it;
    with the replica's IO thread stopped the next commit waits the rendered timeout, once, then the primary goes
    on asynchronously; when the replica is back and caught up, commits are semi-synchronous again."""
    import time

    from kiln.roles.db import SEMI_SYNC_TIMEOUT_MS

    def follows_the_primary(server: Mariadb) -> bool:
        return server is not primary and server.root().status("SHOW SLAVE STATUS").get("Master_Port") == str(
            primary.port
        )

    replicas = [s.root() for s in servers if follows_the_primary(s)]  # after the others: db2 and db3 follow
    if not replicas:  # run alone: its own replica
        replica = start("db2", base, template, cnf_of(bundles["db2"]))
        servers.append(replica)
        join(loopback_bundle(bundles["db1"], primary), primary, base / "db1-root")
        join(loopback_bundle(bundles["db2"], primary), replica, base / "db2-root")
        replicas = [replica.root()]
    p, r = primary.root(), replicas[0]
    assert p.value("SELECT @@rpl_semi_sync_master_wait_point") == "AFTER_SYNC"

    def status(name: str) -> str:
        return p.status(f"SHOW STATUS LIKE '{name}'")["Value"]

    def write(text: str) -> float:
        began = time.monotonic()
        p.execute(
            f"CREATE TABLE IF NOT EXISTS foobar.acks (text VARCHAR(40));\nINSERT INTO foobar.acks VALUES ('{text}');\n"
        )
        return time.monotonic() - began

    deadline = time.monotonic() + 20
    while status("Rpl_semi_sync_master_clients") != str(len(replicas)) and time.monotonic() < deadline:
        time.sleep(0.2)
    write("warm-up")  # the replica is caught up: semi-sync is on
    yes = int(status("Rpl_semi_sync_master_yes_tx"))
    assert write("acknowledged") < SEMI_SYNC_TIMEOUT_MS / 1000
    assert status("Rpl_semi_sync_master_status") == "ON" and int(status("Rpl_semi_sync_master_yes_tx")) > yes

    for replica in replicas:
        replica.execute("STOP SLAVE IO_THREAD;\n")
    try:
        waited = write("no replica")
        assert SEMI_SYNC_TIMEOUT_MS / 1000 - 0.2 <= waited < SEMI_SYNC_TIMEOUT_MS / 1000 + 5, waited
        assert status("Rpl_semi_sync_master_status") == "OFF"
        assert write("asynchronous") < SEMI_SYNC_TIMEOUT_MS / 1000 - 0.5, "the timeout is waited once, not per commit"
    finally:
        for replica in replicas:
            replica.execute("START SLAVE IO_THREAD;\n")
    deadline = time.monotonic() + 20
    while status("Rpl_semi_sync_master_status") != "ON" and time.monotonic() < deadline:
        write("catching up")
        time.sleep(0.2)
    assert status("Rpl_semi_sync_master_status") == "ON", "semi-sync again once the replica caught up"
    assert wait_rows(r, "SELECT COUNT(*) FROM foobar.acks WHERE text = 'no replica'", "1") == "1"
