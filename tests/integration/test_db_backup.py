"""Backups and tested restores, for real: a MariaDB primary and a GTID replica on loopback (the db role's rendered
config), a moto S3 server, mariadb-backup, mbstream and mariadb-binlog.

One story, in order: rows are written on the primary; a backup of the replica is streamed, sealed and uploaded
(the primary sees no connection); more writes, a checkpoint in the middle of a binary log, an archive run, more
writes, another archive run; restore-test brings the backup plus binlogs to each checkpoint in a scratch server,
and every table matches the source there. Then what must fail does: a wrong key, an altered object, a gap in the
binlogs, data that differs from the checkpoint, a backup of the primary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.bundle import Bundle
from kiln.db import cli as db_cli
from kiln.db.backup import (
    BackupError,
    Retention,
    archive,
    expire,
    list_backups,
    list_binlogs,
    list_checkpoints,
    run_backup,
    take_backup,
    take_checkpoint,
)
from kiln.db.gtid import Position
from kiln.db.restore import RestoreError, plan_restore, restore_test
from kiln.db.seal import Tampered, WrongKey
from kiln.db.source import DbHost
from kiln.db.store import Store, StoreError, Target
from kiln.model import Cluster
from kiln.project import Project
from kiln.secrets import SecretStore
from tests.integration.agent_mariadb import Mariadb, start, template_datadir
from tests.integration.hostroot import applied_bundles
from tests.moto_server import create_bucket, moto_server

pytestmark = pytest.mark.integration
PROJECT = Path(__file__).resolve().parents[2]
CNF = "/etc/mysql/mariadb.conf.d/60-kiln.cnf"
BUCKET = "kiln-backups"
PREFIX = "foobar/"


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="kiln-db-backup-"))
    directory.chmod(0o711)  # restore-test's scratch directories below belong to the OS user mysql
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        create_bucket(url, BUCKET)
        yield url


@pytest.fixture(scope="module")
def secrets(base: Path, cluster: Cluster) -> SecretStore:
    """This module's own secrets/: backup.key made by ensure(), the bucket's credentials as an operator writes them."""
    store = SecretStore(base / "secrets")
    store.ensure(cluster)
    (store.root / "backup_s3").write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    return store


@pytest.fixture(scope="module")
def store(endpoint: str) -> Store:
    return Store(
        Target(bucket=BUCKET, prefix=PREFIX, endpoint=endpoint, access_key_id="testing", secret_access_key="testing")
    )


@pytest.fixture(scope="module")
def servers(base: Path, cluster: Cluster, secret_store: SecretStore) -> Iterator[tuple[Mariadb, Mariadb]]:
    bundles: dict[str, Bundle] = applied_bundles(cluster, secret_store)
    cnf = {name: next(f.content for f in bundles[name].files if f.path == CNF) for name in ("db1", "db2")}
    template = template_datadir(base)
    started: list[Mariadb] = []
    try:
        primary = start("db1", base, template, cnf["db1"])
        started.append(primary)
        replica = start("db2", base, template, cnf["db2"])
        started.append(replica)
        follow(primary, replica)
        primary.root().execute("CREATE DATABASE foobar;")
        yield primary, replica
    finally:
        for server in started:
            server.stop()


def source_of(server: Mariadb) -> DbHost:
    """The db host as the runner reaches it here: commands run locally, root by the server's socket."""
    client = ("--no-defaults", f"--socket={server.socket}", "--user=root")
    backup = (f"--defaults-file={server.directory / 'my.cnf'}", f"--socket={server.socket}", "--user=root")
    return DbHost(server.name, client=client, backup=backup)


def write(primary: Mariadb, sql: str) -> None:
    primary.root().execute(sql)


def follow(primary: Mariadb, replica: Mariadb) -> None:
    """`replica` replicates from `primary` by GTID (a loopback replication account, no seed: both start empty)."""
    primary.root().execute(
        "CREATE USER repl@'127.0.0.1' IDENTIFIED BY 'repl-pw'; GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1';"
    )
    replica.root().execute(
        f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='repl', "
        "MASTER_PASSWORD='repl-pw', MASTER_USE_GTID=slave_pos; START SLAVE;"
    )


def caught_up(primary: Mariadb, replica: Mariadb, seconds: float = 20) -> str:
    want = primary.root().value("SELECT @@gtid_binlog_pos")
    deadline = time.monotonic() + seconds
    while replica.root().value("SELECT @@gtid_slave_pos") != want:
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.05)
    return want


def connections_of(server: Mariadb) -> int:
    """The server's count of client connections so far (this query's own included)."""
    sql = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'CONNECTIONS'"
    return int(server.root().value(sql))


def rows(n0: int, n1: int, tag: str) -> str:
    return ",".join(f"({i}, '{tag} row {i}', {i * 7 % 1000})" for i in range(n0, n1))


@pytest.fixture(scope="module")
def story(servers: tuple[Mariadb, Mariadb], store: Store, secrets: SecretStore, base: Path) -> dict[str, Any]:
    """Writes, a backup, a checkpoint mid-binlog, writes, an archive run: what the tests below restore."""
    primary, replica = servers
    key = secrets.backup_key()
    write(primary, "CREATE TABLE foobar.notes (id INT PRIMARY KEY, text VARCHAR(60), n INT) ENGINE=InnoDB;")
    for start_id in range(0, 40000, 10000):
        write(primary, f"INSERT INTO foobar.notes VALUES {rows(start_id, start_id + 10000, 'a')};")
    backed_up = caught_up(primary, replica)
    connections = connections_of(primary)
    t = time.monotonic()
    first = run_backup(store, source_of(replica), key, Retention(keep=5, keep_days=0), workdir=base)
    backup_seconds = time.monotonic() - t
    connections_after = connections_of(primary)
    write(primary, f"INSERT INTO foobar.notes VALUES {rows(40000, 42000, 'b')};")
    write(primary, "UPDATE foobar.notes SET n = n + 1 WHERE id % 3 = 0; DELETE FROM foobar.notes WHERE id % 10 = 1;")
    write(primary, "CREATE TABLE foobar.orders (id INT PRIMARY KEY AUTO_INCREMENT, note INT, total DECIMAL(9,2));")
    write(primary, "INSERT INTO foobar.orders (note, total) SELECT id, n / 10 FROM foobar.notes WHERE id < 5000;")
    caught_up(primary, replica)
    middle = take_checkpoint(store, source_of(replica), flush=False)  # no flush: it ends inside a binary log
    middle_counts = {t: primary.root().value(f"SELECT COUNT(*) FROM foobar.{t}") for t in ("notes", "orders")}
    write(primary, "UPDATE foobar.orders SET total = total + 1 WHERE id < 50;")  # after the checkpoint, same binlog
    # one transaction of 18 MB: its row events come back as one BINLOG statement, above MariaDB's 16 MB default
    # max_allowed_packet (restore-test once failed on it with "Server has gone away")
    write(
        primary,
        "CREATE TABLE foobar.big (id INT PRIMARY KEY, text VARCHAR(1000));"
        "INSERT INTO foobar.big SELECT seq, REPEAT('x', 1000) FROM foobar.seq_1_to_18000;",
    )
    caught_up(primary, replica)
    archive(store, source_of(replica), key, workdir=base)  # closes that binlog
    write(primary, "DELETE FROM foobar.orders WHERE id % 2 = 0; UPDATE foobar.notes SET text = 'c' WHERE id < 100;")
    caught_up(primary, replica)
    newest, copied = archive(store, source_of(replica), key, workdir=base)
    return {
        "first": first,
        "backed_up": backed_up,
        "backup_seconds": backup_seconds,
        "primary_connections": connections_after - connections,
        "middle": middle,
        "middle_counts": middle_counts,
        "newest": newest,
        "copied": copied,
    }


def test_a_backup_of_the_replica_is_streamed_sealed_and_never_touches_the_primary(
    story: dict[str, Any], store: Store, servers: tuple[Mariadb, Mariadb]
) -> None:
    first = story["first"]
    assert story["primary_connections"] == 1, "only this test's own query reached the primary"
    assert first["host"] == "db2" and first["gtid"] == story["backed_up"]
    assert first["encryption"]["algorithm"] == "AES-256-GCM" and first["compression"]["algorithm"] == "zstd"
    data = b"".join(store.get_stream(first["object"]))
    assert len(data) == first["stored_bytes"] < first["raw_bytes"]
    assert b"a row 1234" not in data and b"InnoDB" not in data  # sealed: no plain text of the data
    print(
        f"\nbackup: {first['raw_bytes'] / 2**20:.1f} MiB raw -> {first['stored_bytes'] / 2**20:.2f} MiB stored in "
        f"{story['backup_seconds']:.1f}s (with checkpoint and binlog archive)"
    )


def test_inv_db_backups_lists_them_with_gtid_size_and_time(
    story: dict[str, Any], endpoint: str, secrets: SecretStore, base: Path
) -> None:
    roles = base / "roles.yaml"
    text = (PROJECT / "roles.yaml").read_text()
    roles.write_text(
        text.replace(
            "  db:  {database: foobar}",
            f"  db:\n    database: foobar\n    backup: {{s3: {{endpoint: '{endpoint}', bucket: {BUCKET}, "
            f"prefix: {PREFIX}}}, credentials: backup_s3, keep: 3}}",
        )
    )
    argv = [sys.executable, "-m", "invoke", "--search-root", str(PROJECT), "db", "backups"]
    argv += ["--roles", str(roles), "--secrets", str(secrets.root)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    first = story["first"]
    line = next(line for line in result.stdout.splitlines() if first["id"] in line)
    assert first["gtid"] in line and first["started"] in line and "MiB" in line
    assert f"newest at GTID {story['newest']['gtid']}" in result.stdout
    listed = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert [b["id"] for b in json.loads(listed)["backups"]] == [first["id"]]


def test_restore_test_stops_inside_a_binlog_at_a_checkpoint_and_matches_the_source(
    story: dict[str, Any], store: Store, secrets: SecretStore, base: Path
) -> None:
    middle = story["middle"]
    plan = plan_restore(store, backup_id=story["first"]["id"], to_gtid=middle["gtid"])
    assert plan.binlogs, "the checkpoint is after the backup: binlogs are applied"
    report = restore_test(store, secrets.backup_key(), plan, workdir=base, buffer_pool="32M", keep=True)
    assert report["to_gtid"] == middle["gtid"] and report["tables"] == 2
    # what the db host wrote was unpacked and served by the OS user mysql, not by root
    restored = Path(report["kept"]) / "data" / "foobar" / "notes.ibd"
    assert restored.stat().st_uid == pwd.getpwnam("mysql").pw_uid
    shutil.rmtree(report["kept"])
    assert report["rows"] == sum(int(n) for n in story["middle_counts"].values())
    # the binlog holds later transactions (the archive run came after): the stop was inside it
    last = Position.parse(plan.binlogs[-1]["end"])
    assert last.covers(Position.parse(middle["gtid"])) and str(last) != middle["gtid"]


def test_inv_db_restore_test_reaches_the_newest_checkpoint_and_prints_rpo_and_time(
    story: dict[str, Any], endpoint: str, secrets: SecretStore, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roles = base / "roles.yaml"
    assert roles.exists(), "written by the listing test"
    code = db_cli.run(Project(roles=roles), "restore-test", secrets=str(secrets.root), workdir=str(base), as_json=True)
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["to_gtid"] == story["newest"]["gtid"] and report["backup"] == story["first"]["id"]
    assert report["binlog_files"] == 2  # one mariadb-binlog run across the files, from the backup to the checkpoint
    assert 0 <= report["rpo_seconds"] < 120 and report["seconds"]["total"] > 0
    print(f"\nrestore-test: {db_cli.restore_summary(report)}")


def test_a_wrong_key_and_an_altered_object_are_refused(
    story: dict[str, Any], store: Store, base: Path, secrets: SecretStore
) -> None:
    plan = plan_restore(store, backup_id=story["first"]["id"])
    with pytest.raises(WrongKey, match="use the secrets/backup.key it was made with"):
        restore_test(store, bytes(32), plan, workdir=base)
    first = story["first"]
    s3 = store._s3
    key = PREFIX + first["object"]
    original = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0x40
    try:
        s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(altered))
        with pytest.raises(RestoreError, match="not the object its manifest describes"):
            restore_test(store, secrets.backup_key(), plan, workdir=base)
        # the manifest altered to match: the sealed chunks still refuse
        forged = dict(first, sha256=hashlib.sha256(bytes(altered)).hexdigest())
        with pytest.raises(Tampered, match="fails authentication"):
            restore_test(store, secrets.backup_key(), type(plan)(forged, plan.checkpoint, plan.binlogs), workdir=base)
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=original)


def test_a_point_the_archived_binlogs_do_not_reach_is_refused_before_restoring(
    story: dict[str, Any], store: Store
) -> None:
    copied = story["copied"]
    assert [b["file"] for b in copied] == ["mariadb-bin.000003"], "an archive run copies only what is new"
    meta = f"{copied[0]['object']}.json"
    saved = store.get_json(meta)
    store.delete([meta])
    try:
        with pytest.raises(
            RestoreError, match=f"GTID {story['newest']['gtid']} is not covered by the archived binlogs"
        ):
            plan_restore(store, backup_id=story["first"]["id"])
    finally:
        store.put_json(meta, saved)
    with pytest.raises(RestoreError, match="no checkpoint at GTID 0-1-999999"):
        plan_restore(store, to_gtid="0-1-999999")
    with pytest.raises(RestoreError, match="no checkpoint at or before 2000-01-01"):
        plan_restore(store, to_time="2000-01-01")
    with pytest.raises(RestoreError, match="is not a time"):
        plan_restore(store, to_time="yesterday")
    assert plan_restore(store, to_time=story["newest"]["time"]).checkpoint["gtid"] == story["newest"]["gtid"]


def test_a_restore_that_differs_from_the_source_fails_and_says_where(
    story: dict[str, Any], store: Store, secrets: SecretStore, base: Path
) -> None:
    """The comparison is real: the same restore against a checkpoint whose checksum of one table is off fails."""
    plan = plan_restore(store, backup_id=story["first"]["id"], to_gtid=story["first"]["gtid"])
    assert not plan.binlogs
    wrong = json.loads(json.dumps(plan.checkpoint))
    wrong["tables"]["foobar.notes"][1] = str(int(wrong["tables"]["foobar.notes"][1]) + 1)
    with pytest.raises(RestoreError, match=r"differs from the source: foobar.notes: checksum \d+, the source's"):
        restore_test(store, secrets.backup_key(), type(plan)(plan.backup, wrong, ()), workdir=base, buffer_pool="32M")


def test_the_primary_is_never_backed_up_and_an_unreachable_store_is_named(
    servers: tuple[Mariadb, Mariadb], store: Store, secrets: SecretStore
) -> None:
    primary, _ = servers
    before = store.names("backups/")
    with pytest.raises(BackupError, match="db1 replicates from nobody: backups are taken from a replica"):
        take_backup(store, source_of(primary), secrets.backup_key())
    assert store.names("backups/") == before
    nowhere = Store(Target(bucket=BUCKET, endpoint="http://127.0.0.1:9", access_key_id="x", secret_access_key="y"))
    with pytest.raises(StoreError, match="the S3 endpoint does not answer"):
        nowhere.check()
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        Store(
            Target(
                bucket="no-such-bucket",
                endpoint=store.target.endpoint,
                access_key_id="testing",
                secret_access_key="testing",
            )
        ).check()


def test_a_failed_backup_leaves_nothing_in_the_bucket_and_replication_running(
    servers: tuple[Mariadb, Mariadb], store: Store, secrets: SecretStore
) -> None:
    _, replica = servers
    before = store.names("")
    broken = DbHost("db2", client=source_of(replica).client, backup=("--defaults-file=/nonexistent/my.cnf",))
    with pytest.raises(BackupError, match=r"mariadb-backup on db2 failed: .* exited"):
        take_backup(store, broken, secrets.backup_key())
    assert store.names("") == before
    status = replica.root().status("SHOW SLAVE STATUS")
    assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")


def test_retention_keeps_the_newest_and_what_they_need(
    story: dict[str, Any], servers: tuple[Mariadb, Mariadb], store: Store, secrets: SecretStore, base: Path
) -> None:
    primary, replica = servers
    write(primary, f"INSERT INTO foobar.notes VALUES {rows(50000, 50100, 'd')};")
    caught_up(primary, replica)
    second = run_backup(store, source_of(replica), secrets.backup_key(), Retention(keep=1, keep_days=0), workdir=base)
    assert [m["id"] for m in list_backups(store)] == [second["id"]]
    assert not store.names(f"backups/{story['first']['id']}/")
    # what no kept backup needs went with the first backup; the newest binlog stays (archiving goes on from it)
    assert all(Position.parse(c["gtid"]).covers(Position.parse(second["gtid"])) for c in list_checkpoints(store))
    assert [b["file"] for b in list_binlogs(store)] == ["mariadb-bin.000004"]
    plan = plan_restore(store)
    assert plan.backup["id"] == second["id"] and plan.checkpoint["gtid"] == second["gtid"]


def test_retention_by_count_and_age(endpoint: str) -> None:
    """Backups go when neither among the `keep` newest nor younger than `keep_days`; binlogs and checkpoints wholly
    before the oldest kept backup go with them, but each host's newest binlog stays."""
    store = Store(
        Target(bucket=BUCKET, prefix="retention/", endpoint=endpoint, access_key_id="t", secret_access_key="t")
    )
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    ages = {"a": 30, "b": 20, "c": 10, "d": 1}  # days old; GTIDs 0-1-10, 0-1-20, ...
    for i, (name, days) in enumerate(ages.items(), start=1):
        started = (now - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = {"id": name, "started": started, "gtid": f"0-1-{i * 10}", "object": f"backups/{name}/data"}
        store.put_json(f"backups/{name}/manifest.json", manifest)
        store.put_json(f"backups/{name}/data", {})
        store.put_json(f"checkpoints/{i}.json", {"gtid": f"0-1-{i * 10}", "time": started, "host": "db2"})
        binlog = {"host": "db2", "file": f"mariadb-bin.00000{i}", "start": f"0-1-{i * 10 - 10}", "end": f"0-1-{i * 10}"}
        store.put_json(f"binlogs/db2/mariadb-bin.00000{i}.json", {**binlog, "object": f"binlogs/db2/{binlog['file']}"})
    assert expire(store, Retention(keep=1, keep_days=14), now=now) == ["b", "a"]
    assert [m["id"] for m in list_backups(store)] == ["c", "d"]
    assert [c["gtid"] for c in list_checkpoints(store)] == ["0-1-30", "0-1-40"]
    assert [b["file"] for b in list_binlogs(store)] == ["mariadb-bin.000004"]  # ends after c's GTID: c needs it
    assert expire(store, Retention(keep=1, keep_days=0), now=now) == ["c"]
    assert [b["file"] for b in list_binlogs(store)] == ["mariadb-bin.000004"]  # covered by d, but the newest
