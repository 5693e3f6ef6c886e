"""The database joins: a GTID primary with its users, and replicas that seed from it and follow it.

Both observe first and act only on what differs, so a second run writes nothing to the binary log
(the tests compare @@gtid_binlog_pos before and after).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from firstboot.backoff import Backoff, DeadlineExceeded, Retry, retry
from firstboot.errors import StepFailed
from firstboot.log import LOG
from firstboot.steps.join.sql import Server, SqlError, account, ident, quote
from kiln.bundle import DbPrimaryJoin, DbReplicaJoin

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
# what the replication user may do: replicate, and take the consistent dump a new replica seeds from
REPLICATION_PRIVILEGES = frozenset(
    {"REPLICATION SLAVE", "BINLOG MONITOR", "SELECT", "RELOAD", "LOCK TABLES", "SHOW VIEW", "EVENT", "TRIGGER"}
    | {"SHOW DATABASES"}  # the rendered config sets skip_show_database; the seed dump lists the databases
    | {"REPLICATION MASTER ADMIN"}  # SHOW SLAVE HOSTS: a new replica checks no other one has its server_id
    | {"SLAVE MONITOR"}  # SHOW SLAVE STATUS: each db host's guard asks its peers whom they follow (firstboot.dbguard)
)
APP_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "INDEX", "ALTER"})
# the mysqld exporter: status, variables, processlist, binlog and replica status; no table data
EXPORTER_PRIVILEGES = frozenset({"PROCESS", "BINLOG MONITOR", "SLAVE MONITOR"})  # SLAVE MONITOR: as 10.11 lists it
# the failover monitor (kiln.db.failover) from the admin network: watch, set read_only, re-point replicas, cut the
# connections of a fenced primary; no data privilege (READ_ONLY ADMIN would let it write, it has nothing to write with)
MONITOR_PRIVILEGES = frozenset(
    {"SLAVE MONITOR", "BINLOG MONITOR", "PROCESS", "REPLICATION SLAVE ADMIN", "REPLICATION MASTER ADMIN"}
    | {"READ_ONLY ADMIN", "CONNECTION ADMIN", "RELOAD"}  # read_only; KILL; RESET SLAVE ALL
)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
NO_BINLOG = "SET SESSION sql_log_bin=0"

Secret = Callable[[str], str]


def _in(values: Sequence[str]) -> str:
    return ", ".join(quote(v) for v in values) or "''"


class Changes:
    """Statements a join decided on, and what they are for; run as one batch."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.notes: list[str] = []

    def add(self, note: str, *statements: str) -> None:
        self.notes.append(note)
        self.statements.extend(statements)

    def apply(self, server: Server, *, init: str = "") -> None:
        if self.statements:
            server.execute(";\n".join(self.statements) + ";\n", init=init)


def _harden(local: Server, changes: Changes) -> None:
    """No anonymous users, no test database, root only from this machine."""
    for user, host in local.rows("SELECT User, Host FROM mysql.user WHERE User = ''"):
        changes.add(f"drop anonymous user @{host}", f"DROP USER IF EXISTS {account(user, host)}")
    for user, host in local.rows(
        f"SELECT User, Host FROM mysql.user WHERE User = 'root' AND Host NOT IN {('(' + _in(LOCAL_HOSTS) + ')')}"
    ):
        changes.add(f"drop remote root @{host}", f"DROP USER IF EXISTS {account(user, host)}")
    if local.value("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'test'") != "0":
        changes.add("drop the test database", "DROP DATABASE IF EXISTS test")
    if local.value(r"SELECT COUNT(*) FROM mysql.db WHERE Db = 'test' OR Db = 'test\\_%'") != "0":
        changes.add(
            "drop grants on test databases",
            r"DELETE FROM mysql.db WHERE Db = 'test' OR Db = 'test\\_%'",
            "FLUSH PRIVILEGES",
        )


def _ensure_user(
    local: Server, changes: Changes, user: str, host: str, password: str | None, privileges: frozenset[str], on: str
) -> None:
    """The account with this password (None: unix_socket, the OS user of the same name) and at least these grants."""
    acct = account(user, host)
    grantee = f"'{user}'@'{host}'"
    if password is None:
        how, same = "VIA unix_socket", "plugin = 'unix_socket'"
    else:
        how, same = f"BY {quote(password)}", f"authentication_string = PASSWORD({quote(password)})"
    current = local.rows(f"SELECT {same} FROM mysql.user WHERE User = {quote(user)} AND Host = {quote(host)}")
    if not current:
        changes.add(f"create {user}@{host}", f"CREATE USER {acct} IDENTIFIED {how}")
    elif current[0][0] != "1":
        changes.add(f"set how {user}@{host} logs in", f"ALTER USER {acct} IDENTIFIED {how}")
    if on == "*.*":
        have = {
            r[0]
            for r in local.rows(
                f"SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = {quote(grantee)}"
            )
        }
    else:
        schema = on.split(".")[0].strip("`")
        have = {
            r[0]
            for r in local.rows(
                f"SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES "
                f"WHERE GRANTEE = {quote(grantee)} AND TABLE_SCHEMA = {quote(schema)}"
            )
        }
    missing = sorted(privileges - have)
    if missing:
        changes.add(
            f"grant {', '.join(missing)} on {on} to {user}@{host}", f"GRANT {', '.join(missing)} ON {on} TO {acct}"
        )


def _drop_others(local: Server, changes: Changes, user: str, hosts: Sequence[str]) -> None:
    for _, host in local.rows(
        f"SELECT User, Host FROM mysql.user WHERE User = {quote(user)} AND Host NOT IN ({_in(hosts)})"
    ):
        changes.add(f"drop {user}@{host} (no longer in roles.yaml)", f"DROP USER IF EXISTS {account(user, host)}")


def _peers_read_only(spec: DbPrimaryJoin, secret: Secret, local: Server) -> tuple[list[str], list[str]]:
    """The other db hosts that are writable, and those that do not answer (asked as the replication user)."""
    me = local.value("SELECT @@report_host")
    password = secret("db_replication_password")
    writable, silent = [], []
    for host in spec.replica_hosts:
        if host == me:
            continue
        peer = Server(host=host, port=spec.port, user=spec.replication_user, password=password, timeout=10)
        try:
            if peer.value("SELECT @@read_only") == "0":
                writable.append(host)
        except SqlError:
            silent.append(host)
    return writable, silent


def join_primary(spec: DbPrimaryJoin, secret: Secret, local: Server) -> str:
    """Binlog + GTID on, replication user for the db hosts, app user for the app hosts, the failover monitor's
    account for the admin network, hardened; then writable, unless another db host is (a failover happened).

    A host roles.yaml names primary that follows another one (demoted by a failover or switchover) changes
    nothing: its accounts come from the current primary by replication."""
    following = local.status("SHOW SLAVE STATUS").get("Master_Host")
    if following:
        LOG.warning(
            "db-primary: follows %s since a failover or switchover; accounts are the primary's to manage", following
        )
        return (
            f"not the primary: follows {following} (a failover or switchover); roles.yaml still names this host "
            "primary: set db_role to match ./inv db status, then ./inv apply"
        )
    fresh = local.value("SELECT @@gtid_binlog_pos") == ""  # a first boot: no replica can be ahead of it
    log_bin = local.value("SELECT @@log_bin")
    if log_bin != "1":
        raise StepFailed(
            "the binary log is off, so replicas cannot follow this primary",
            "check /etc/mysql/mariadb.conf.d/60-kiln.cnf (log_bin) and restart mariadb",
        )
    server_id = local.value("SELECT @@server_id")
    if server_id != str(spec.server_id):
        raise StepFailed(
            f"server_id is {server_id}, the bundle says {spec.server_id}",
            "restart mariadb so it reads 60-kiln.cnf",
        )
    db = spec.database
    hardening = Changes()  # local to each server, kept out of the binary log (replicas harden themselves)
    _harden(local, hardening)
    hardening.apply(local, init=NO_BINLOG)
    changes = Changes()
    if local.value(f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {quote(db)}") == "0":
        changes.add(f"create database {db}", f"CREATE DATABASE {ident(db)} CHARACTER SET utf8mb4")
    repl, app = spec.replication_user, spec.app_user
    for host in spec.replica_hosts:
        _ensure_user(local, changes, repl, host, secret("db_replication_password"), REPLICATION_PRIVILEGES, "*.*")
    _drop_others(local, changes, repl, spec.replica_hosts)
    for host in spec.app_hosts:
        _ensure_user(local, changes, app, host, secret("db_app_password"), APP_PRIVILEGES, f"{ident(db)}.*")
    _drop_others(local, changes, app, spec.app_hosts)
    exporter = spec.exporter_user
    _ensure_user(local, changes, exporter, "localhost", None, EXPORTER_PRIVILEGES, "*.*")
    _drop_others(local, changes, exporter, ["localhost"])
    for host in spec.monitor_hosts:
        _ensure_user(local, changes, spec.monitor_user, host, secret("db_monitor_password"), MONITOR_PRIVILEGES, "*.*")
    _drop_others(local, changes, spec.monitor_user, spec.monitor_hosts)
    admin = secret("db_admin_password")
    priv = local.value("SELECT Priv FROM mysql.global_priv WHERE User = 'root' AND Host = 'localhost'")
    if local.value(f"SELECT PASSWORD({quote(admin)})") not in priv or "unix_socket" not in priv:
        changes.add(
            "root@localhost: unix socket or the admin password",
            "ALTER USER root@localhost IDENTIFIED VIA unix_socket "
            f"OR mysql_native_password USING PASSWORD({quote(admin)})",
        )
    read_only = local.value("SELECT @@read_only") == "1"
    writable_peers, silent_peers = _peers_read_only(spec, secret, local) if read_only else ([], [])
    if writable_peers:
        raise StepFailed(
            f"{', '.join(writable_peers)} is writable: it became the primary (a failover or switchover) while this "
            "host was away",
            "make roles.yaml say so (db_role: primary there, replica here), ./inv apply, then re-provision this host "
            "(./inv reprovision HOST --force) so it seeds from the current primary",
        )
    changes.apply(local)
    if read_only and (fresh or not silent_peers):
        local.execute("SET GLOBAL rpl_semi_sync_master_enabled = ON;\nSET GLOBAL read_only = OFF;\n")
        changes.notes.append("writable (no other db host is)")
    elif read_only:  # a peer that does not answer might have been promoted: the guard or the monitor decides
        changes.notes.append(f"left read-only: {', '.join(silent_peers)} do not answer")
    position = local.value("SELECT @@gtid_binlog_pos")
    notes = hardening.notes + changes.notes
    for note in notes:
        LOG.info("db-primary: %s", note)
    what = f"{len(notes)} changes" if notes else "unchanged"
    return f"primary {what}; binlog on, server_id {server_id}, gtid_binlog_pos {position or '(empty)'}"


def _replicating(status: dict[str, str], spec: DbReplicaJoin) -> bool:
    return (
        status.get("Master_Host") == spec.primary
        and status.get("Master_Port") == str(spec.port)
        and status.get("Master_User") == spec.replication_user
        and status.get("Using_Gtid") == "Slave_Pos"
    )


def _wait_for_primary(primary: Server, wait_seconds: float) -> None:
    def attempt() -> None:
        try:
            primary.value("SELECT 1")
        except SqlError as e:
            raise Retry(str(e)) from None

    try:
        retry(
            attempt,
            f"wait for the primary {primary.host}:{primary.port}",
            Backoff(initial=0.5, cap=10.0, deadline=wait_seconds),
        )
    except DeadlineExceeded as e:
        raise StepFailed(
            f"the primary {primary.host}:{primary.port} did not answer within {wait_seconds:.0f}s: {e.last}",
            "start or repair the primary (its firstboot status), then run `firstboot run` here",
        ) from None


# one transaction, the GTID position recorded (at the end of the dump), everything a replica needs
SEED_DUMP_OPTIONS = (
    "--all-databases",
    "--single-transaction",
    "--master-data=2",
    "--gtid",
    "--routines",
    "--events",
    "--triggers",
)
GTID_IN_DUMP = re.compile(r"SET GLOBAL gtid_slave_pos\s*=\s*'([0-9,\-]*)'")


def _seed(primary: Server, local: Server) -> str:
    """A consistent dump of the primary (one transaction, GTID position recorded), loaded without binlogging."""
    with tempfile.TemporaryDirectory(prefix="firstboot-seed-") as tmp:
        dump = Path(tmp) / "seed.sql"
        primary.dump(dump, SEED_DUMP_OPTIONS)
        dump.chmod(0o600)
        with dump.open("rb") as f:  # the GTID position is written at the end of the dump
            f.seek(max(0, dump.stat().st_size - 8192))
            tail = f.read().decode(errors="replace")
        found = GTID_IN_DUMP.search(tail)
        if not found:
            raise StepFailed("the seed dump carries no GTID position", "check that the primary has log_bin on")
        local.execute(f"source {dump}\n", init=NO_BINLOG)
        local.execute("FLUSH PRIVILEGES;\n", init=NO_BINLOG)
        return found.group(1)


def _primary_has_data(primary: Server) -> bool:
    count = primary.value(
        f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA NOT IN ({_in(SYSTEM_SCHEMAS)})"
    )
    return count not in ("", "0")


def _verify_threads(local: Server, deadline: float) -> dict[str, str]:
    end = time.monotonic() + deadline
    while True:
        status = local.status("SHOW SLAVE STATUS")
        threads = (status.get("Slave_IO_Running"), status.get("Slave_SQL_Running"))
        if threads == ("Yes", "Yes") and status.get("Seconds_Behind_Master") not in ("", "NULL", None):
            return status
        if time.monotonic() > end:
            error = status.get("Last_IO_Error") or status.get("Last_SQL_Error") or "no error reported"
            raise StepFailed(
                f"replication did not start: IO thread {status.get('Slave_IO_Running')}, "
                f"SQL thread {status.get('Slave_SQL_Running')}: {error}",
                "read SHOW SLAVE STATUS on this host and the primary's firstboot status; then run `firstboot run`",
            )
        time.sleep(0.2)


def _refuse_a_taken_server_id(primary: Server, local: Server) -> None:
    """Another replica following the primary with this server_id would be kicked off it again and again (errno
    4052) while both report their threads running: refuse to join instead, naming the other one."""
    mine, me = local.value("SELECT @@server_id"), local.value("SELECT @@report_host")
    for row in primary.rows("SHOW SLAVE HOSTS"):  # Server_id, Host (its report_host), Port, Master_id
        if row and row[0] == mine and (len(row) < 2 or row[1] != me):
            other = row[1] if len(row) > 1 and row[1] else "another replica"
            raise StepFailed(
                f"server_id {mine} is already used by {other}, which follows the primary",
                "give this host a distinct server_id (roles.yaml hosts[].server_id), ./inv apply, then run "
                "`firstboot run`",
            )


def _change_master(spec: DbReplicaJoin, password: str) -> str:
    """The statement that points this replica at the bundle's primary, from its own gtid_slave_pos."""
    return (
        f"CHANGE MASTER TO MASTER_HOST = {quote(spec.primary)}, MASTER_PORT = {spec.port}, "
        f"MASTER_USER = {quote(spec.replication_user)}, MASTER_PASSWORD = {quote(password)}, "
        "MASTER_CONNECT_RETRY = 5, MASTER_USE_GTID = slave_pos;\n"
    )


def _replicated_position(status: dict[str, str], local: Server, spec: DbReplicaJoin) -> str:
    """The GTID position of a replica that replicates already (SHOW SLAVE STATUS rows, or a gtid_slave_pos);
    StepFailed for a server that never did: converge does not reset or seed one."""
    position = local.value("SELECT @@gtid_slave_pos")
    if not status and not position:
        raise StepFailed(
            "this host does not replicate yet, and converge never resets or seeds a database",
            f"make it a replica on purpose: re-provision it (./inv reprovision HOST), whose first boot seeds it "
            f"from {spec.primary}",
        )
    return position


def _repoint(spec: DbReplicaJoin, password: str, status: dict[str, str], position: str, local: Server) -> str:
    """Follow another primary from the GTID position this replica has: its data and its position are the
    cluster's, so nothing is reset and nothing seeded."""
    was = f"{status.get('Master_Host')}:{status.get('Master_Port')}" if status else "no primary"
    local.execute(f"STOP SLAVE;\n{_change_master(spec, password)}START SLAVE;\n")
    return f"re-pointed from {was} to {spec.primary}:{spec.port} at GTID {position or '(empty)'}"


def _new_replica(spec: DbReplicaJoin, password: str, primary: Server, local: Server) -> list[str]:
    """A new replica: hardened, nothing of its own kept, seeded when the primary has data, then following it."""
    local_changes = Changes()
    _harden(local, local_changes)
    local_changes.apply(local, init=NO_BINLOG)
    notes = local_changes.notes
    local.execute("STOP SLAVE;\nRESET SLAVE ALL;\nRESET MASTER;\n")  # a new replica: nothing of its own to keep
    if _primary_has_data(primary):
        position = _seed(primary, local)
        notes.append(f"seeded from the primary at GTID {position}")
    else:
        position = ""
        notes.append("primary holds no data: following it from the start of its binary log")
    local.execute(f"SET GLOBAL gtid_slave_pos = {quote(position)};\n{_change_master(spec, password)}START SLAVE;\n")
    notes.append(f"following {spec.primary}:{spec.port} with MASTER_USE_GTID=slave_pos")
    return notes


def _demoted(spec: DbReplicaJoin, password: str) -> bool:
    """roles.yaml's primary answers and is read-only: a failover or switchover made another host primary."""
    primary = Server(host=spec.primary, port=spec.port, user=spec.replication_user, password=password, timeout=10)
    try:
        return primary.value("SELECT @@read_only") == "1"
    except SqlError:
        return False


def join_replica(
    spec: DbReplicaJoin, secret: Secret, local: Server, *, verify_seconds: float = 60.0, repoint: bool = False
) -> str:
    """Follow the primary by GTID, seeding from it first when it already holds data; read_only on.

    `repoint` (converge, on a running replica): one that replicates already and must follow another primary
    changes only where it replicates from (STOP SLAVE, CHANGE MASTER TO, START SLAVE): never RESET MASTER, never a
    seed; one that does not replicate at all is refused rather than reset."""
    user = spec.replication_user
    password = secret("db_replication_password")
    status = local.status("SHOW SLAVE STATUS")
    if repoint and not status and local.value("SELECT @@read_only") == "0":
        LOG.warning("db-replica: this host is the primary since a failover or switchover; not re-pointed")
        return (
            "not a replica: the writable primary since a failover or switchover; roles.yaml still names it replica: "
            "set db_role to match ./inv db status, then ./inv apply"
        )
    notes: list[str] = []
    if repoint and status and not _replicating(status, spec) and _demoted(spec, password):
        LOG.warning(
            "db-replica: %s is read-only (demoted); keeps following %s", spec.primary, status.get("Master_Host")
        )
        return (
            f"follows {status.get('Master_Host')}, the primary since a failover or switchover; roles.yaml's primary "
            f"{spec.primary} is read-only: set db_role to match ./inv db status, then ./inv apply"
        )
    if not _replicating(status, spec):
        position = _replicated_position(status, local, spec) if repoint else ""
        primary = Server(host=spec.primary, port=spec.port, user=user, password=password)
        _wait_for_primary(primary, float(spec.wait_seconds))
        if local.value("SELECT @@server_id") == primary.value("SELECT @@server_id"):
            raise StepFailed(
                "this replica has the same server_id as its primary", "restart mariadb so it reads 60-kiln.cnf"
            )
        _refuse_a_taken_server_id(primary, local)
        if repoint:
            notes.append(_repoint(spec, password, status, position, local))
        else:
            notes += _new_replica(spec, password, primary, local)
    elif status.get("Slave_IO_Running") != "Yes" or status.get("Slave_SQL_Running") != "Yes":
        local.execute("START SLAVE;\n")
        notes.append("started the replica threads")
    status = _verify_threads(local, verify_seconds)
    if local.value("SELECT @@read_only") != "1":
        local.execute("SET GLOBAL read_only = ON;\n")
        notes.append("read_only on")
    for note in notes:
        LOG.info("db-replica: %s", note)
    return (
        f"replica {'unchanged' if not notes else f'{len(notes)} changes'}; IO and SQL threads running, "
        f"{status.get('Seconds_Behind_Master')}s behind, "
        f"gtid_slave_pos {local.value('SELECT @@gtid_slave_pos') or '(empty)'}, read_only"
    )
