"""The db hosts as the failover monitor and switchover see them, and the statements that change who is primary.

One kept PyMySQL connection per db host, as the `kiln_monitor` account (created by the primary's join for the
admin network): the db guard on the primary reads that connection's idleness in PROCESSLIST to know the monitor
still sees it (firstboot.dbguard). Every change here is made with MariaDB's own primitives: read_only,
MASTER_GTID_WAIT, STOP/RESET SLAVE, CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos, semi-sync variables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

from firstboot.dbguard import MONITOR_USER, Kept, fence
from firstboot.steps.join.sql import SqlError
from kiln.db.gtid import Position

CONNECT_TIMEOUT = 2
QUERY_TIMEOUT = 3  # a hung primary costs a tick this long; longer waits are made of short statements
ERRANT = 1236  # ER_MASTER_FATAL_ERROR_READING_BINLOG: the primary lacks a GTID the replica asks for


# what Seen.role says of a db host (the dashboard's /v1/db accepts exactly these)
ROLES = ("primary", "replica", "read-only", "unreachable")


class ReplicationError(Exception):
    """A change the operator asked for could not be made; says what state it left."""


@dataclass(frozen=True)
class Seen:
    """One db host at one moment. Positions are MariaDB GTID lists ("0-1-42")."""

    name: str
    address: str
    answered: bool
    error: str = ""
    read_only: bool = True
    binlog_pos: str = ""
    slave_pos: str = ""
    io_pos: str = ""  # Gtid_IO_Pos: what its IO thread received (acknowledged to the primary under semi-sync)
    master_host: str = ""  # "" when it follows nobody
    io_running: str = ""  # Yes, No, Connecting
    sql_running: str = ""
    io_errno: int = 0
    io_error: str = ""
    lag: int | None = None  # Seconds_Behind_Master
    semi_sync: bool = False  # Rpl_semi_sync_master_status: its commits wait for a replica's acknowledgement

    @property
    def received(self) -> Position:
        """How far this host's data reaches once its relay log is applied."""
        return Position.parse(",".join(p for p in (self.io_pos, self.slave_pos, self.binlog_pos) if p))

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "answered": self.answered,
            "error": self.error,
            "role": self.role,
            "gtid": self.binlog_pos,
            "follows": self.master_host,
            "io": self.io_running,
            "sql": self.sql_running,
            "lag": self.lag,
            "semi_sync": self.semi_sync,
        }

    @property
    def role(self) -> str:
        if not self.answered:
            return "unreachable"
        if not self.read_only:
            return "primary"
        return "replica" if self.master_host else "read-only"  # following nobody: fenced, or back from a restart


@dataclass(frozen=True)
class DbNode:
    name: str
    address: str
    port: int


class Replication:
    """The db hosts (roles.yaml's), reached as `kiln_monitor`; the replication user's password re-points them."""

    def __init__(
        self,
        nodes: Sequence[DbNode],
        *,
        password: str,
        replication_user: str,
        replication_password: str,
        user: str = MONITOR_USER,
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.user, self.password = user, password
        self.replication_user, self.replication_password = replication_user, replication_password
        self._conns: dict[str, pymysql.connections.Connection] = {}

    # -- connections

    def connect(self, name: str, *, timeout: float = QUERY_TIMEOUT) -> pymysql.connections.Connection:
        """A new connection to host `name` as the monitor; statements on it may take `timeout` seconds."""
        node = self.nodes[name]
        return pymysql.connect(
            host=node.address,
            port=node.port,
            user=self.user,
            password=self.password,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
        )

    def _conn(self, name: str) -> pymysql.connections.Connection:
        if name not in self._conns:
            self._conns[name] = self.connect(name)
        return self._conns[name]

    def _drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def query(self, name: str, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of one statement on host `name`; a failure drops the connection and raises pymysql's error."""
        try:
            with self._conn(name).cursor() as cur:
                cur.execute(sql, args or None)
                return list(cur.fetchall())
        except (pymysql.MySQLError, OSError):
            self._drop(name)
            raise

    def execute(self, name: str, *statements: str) -> None:
        for sql in statements:
            self.query(name, sql)

    def close(self) -> None:
        for name in list(self._conns):
            self._drop(name)

    # -- observation

    def see(self, name: str) -> Seen:
        node = self.nodes[name]
        try:
            v = self.query(name, "SELECT @@read_only AS ro, @@gtid_binlog_pos AS b, @@gtid_slave_pos AS s")[0]
            slave = self.query(name, "SHOW SLAVE STATUS")
            semi = self.query(name, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'")
        except (pymysql.MySQLError, OSError) as e:
            return Seen(name, node.address, answered=False, error=str(e))
        s = slave[0] if slave else {}
        lag = s.get("Seconds_Behind_Master")
        return Seen(
            name,
            node.address,
            answered=True,
            read_only=bool(int(v["ro"])),
            binlog_pos=v["b"] or "",
            slave_pos=v["s"] or "",
            io_pos=s.get("Gtid_IO_Pos") or "",
            master_host=s.get("Master_Host") or "",
            io_running=s.get("Slave_IO_Running") or "",
            sql_running=s.get("Slave_SQL_Running") or "",
            io_errno=int(s.get("Last_IO_Errno") or 0),
            io_error=s.get("Last_IO_Error") or "",
            lag=None if lag is None else int(lag),
            semi_sync=bool(semi) and semi[0]["Value"] == "ON",
        )

    def see_all(self) -> list[Seen]:
        return [self.see(name) for name in self.nodes]

    # -- changes

    def fence(self, name: str) -> None:
        """read_only ON, cutting the connections whose commit waits for a semi-sync acknowledgement: the guard's
        own fence (firstboot.dbguard.fence, which says why), over the monitor's account."""
        node = self.nodes[name]
        connection = Kept(
            host=node.address,
            port=node.port,
            user=self.user,
            password=self.password,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=QUERY_TIMEOUT,
        )
        try:
            fence(connection)
        except SqlError as e:
            raise pymysql.err.OperationalError(2013, str(e)) from None
        finally:
            connection.close()

    def make_writable(self, name: str) -> None:
        """The primary's side of semi-sync on, read_only off: from now on it takes the writes."""
        self.execute(name, "SET GLOBAL rpl_semi_sync_master_enabled = ON", "SET GLOBAL read_only = OFF")

    def wait_applied(self, name: str, position: str, seconds: float) -> bool:
        """True once host `name` applied every transaction up to `position` (MASTER_GTID_WAIT)."""
        if not position:
            return True
        end = time.monotonic() + seconds
        while True:
            if self.query(name, "SELECT MASTER_GTID_WAIT(%s, 1) AS r", (position,))[0]["r"] == 0:
                return True
            if time.monotonic() > end:
                return False

    def promote(self, name: str, *, catch_up: float) -> str:
        """Host `name` (a replica) applies what it received, stops following, and becomes writable. Returns its
        GTID position. ReplicationError (nothing changed but its IO thread stopped) when it cannot catch up."""
        seen = self.see(name)
        self.execute(name, "STOP SLAVE IO_THREAD")
        if not self.wait_applied(name, seen.io_pos, catch_up):
            raise ReplicationError(
                f"{name} did not apply what it received ({seen.io_pos}) within {catch_up:.0f}s; its IO thread is "
                "stopped, nothing else changed"
            )
        self.execute(name, "STOP SLAVE", "RESET SLAVE ALL")
        self.make_writable(name)
        return str(self.query(name, "SELECT @@gtid_binlog_pos AS p")[0]["p"] or "")

    def follow(self, name: str, primary: str, *, own_binlog: bool = False) -> None:
        """Host `name` replicates from `primary` by GTID. `own_binlog`: a former primary, whose own binary log (not
        its stale gtid_slave_pos) is where it stands."""
        p = self.nodes[primary]
        statements = ["STOP SLAVE", "SET GLOBAL rpl_semi_sync_master_enabled = OFF"]
        if own_binlog:
            statements.append("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
        self.execute(name, *statements)
        self.query(
            name,
            "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, MASTER_PASSWORD = %s, "
            "MASTER_CONNECT_RETRY = 2, MASTER_HEARTBEAT_PERIOD = 1, MASTER_USE_GTID = slave_pos",
            (p.address, p.port, self.replication_user, self.replication_password),
        )
        self.execute(name, "START SLAVE")

    def replicating(self, name: str, seconds: float) -> Seen:
        """Host `name` once both threads run, or its IO thread failed for good, or after `seconds`."""
        end = time.monotonic() + seconds
        while True:
            seen = self.see(name)
            done = seen.io_running == "Yes" and seen.sql_running == "Yes"
            if done or seen.io_errno == ERRANT or time.monotonic() > end:
                return seen
            time.sleep(0.2)

    def stop_following(self, name: str) -> None:
        self.execute(name, "STOP SLAVE", "RESET SLAVE ALL")


def errant(former: Seen, primary: Seen) -> str:
    """The part of `former`'s own history `primary` lacks ("" when none shows in the positions): transactions only
    the former primary has, which following the new one would silently drop or clash with."""
    mine, theirs = Position.parse(former.binlog_pos), Position.parse(primary.binlog_pos)
    ahead = [f"{d}-{s}-{n}" for d, s, n in mine.domains if n > theirs.seq(d)]
    same_seq_other_server = [
        f"{d}-{s}-{n}" for d, s, n in mine.domains if n == theirs.seq(d) and (d, s, n) not in theirs.domains
    ]
    return ",".join(ahead + same_seq_other_server)
