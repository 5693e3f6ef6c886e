"""The db guard (`firstboot db-guard`, kiln-db-guard.service on every db host): at most one writable node, also when
the network splits.

A writable MariaDB that for `fence_after` seconds has seen neither the failover monitor (its kept connection,
`information_schema.PROCESSLIST`) nor a peer replicating from it fences itself: its clients' connections are cut,
first those waiting for a semi-sync acknowledgement (their commits were never acknowledged, and stay so), then
`read_only` is set. The monitor promotes a replica only after the primary was out of its sight for longer than that
(kiln.db.failover.DETECT_SECONDS), and only when no replica still hears it, so by then the old primary fenced itself.

It also lifts the read_only a restart or its own fence put up (every db host starts read_only) when no monitor
runs: a node that follows nobody, whose every peer answers, none of them writable, all replicating from it (IO
thread running: the monitor never promotes a replica that hears its primary), none ahead of it, is the primary it
was; it turns writable again, so neither a primary's reboot nor a replica's (which left it alone and fenced) needs
the monitor. With a monitor running (seen within fence_after of the guard's start) the monitor decides.

The guard talks to its own server as root over the socket, to its peers as the replication user (SLAVE MONITOR),
over kept PyMySQL connections: under emulation a `mariadb` client started twice a second kept half a core busy.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pymysql

from firstboot.log import LOG
from firstboot.steps.join.sql import SqlError, quote
from kiln.db.gtid import Position

MONITOR_USER = "kiln_monitor"
FENCE_AFTER = 4.0  # seconds; kiln.db.failover.DETECT_SECONDS and the semi-sync timeout are well above it
TICK = 1.0
PEER_CONNECT_TIMEOUT = 1  # seconds: peers are asked side by side, so a cut-off host learns it within about this
PEER_READ_TIMEOUT = 2  # a kept connection to a peer cut off since: its statement gives up after this
# the PROCESSLIST state of a commit waiting for a replica's acknowledgement ("...from slave" in 10.11, "...from
# replica" where the new terminology is built in: matched as a prefix)
WAITING_FOR_ACK = "Waiting for semi-sync ACK from"


@dataclass(frozen=True)
class GuardConfig:
    """/etc/kiln/db-guard.json, rendered by the db role."""

    address: str  # this host's db address (what its peers' Master_Host says when they follow it)
    port: int
    peers: tuple[str, ...]  # the other db hosts' addresses
    peer_user: str  # the replication user, which has SLAVE MONITOR on every db host
    password_file: str
    fence_after: float = FENCE_AFTER

    @classmethod
    def load(cls, path: Path) -> GuardConfig:
        return cls.load_text(path.read_text())

    @classmethod
    def load_text(cls, text: str) -> GuardConfig:
        data = json.loads(text)
        return cls(
            address=data["address"],
            port=int(data["port"]),
            peers=tuple(data["peers"]),
            peer_user=data["peer_user"],
            password_file=data["password_file"],
            fence_after=float(data.get("fence_after", FENCE_AFTER)),
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "peers": list(self.peers)}, indent=2)


@dataclass
class Kept:
    """One kept connection: to the local server as root over its socket, or to a peer as a user; opened again on
    the next statement after a failure. Values come back as the mariadb client prints them (NULL as "")."""

    socket: str = ""
    host: str = ""
    port: int = 3306
    user: str = "root"
    password: str = ""
    connect_timeout: float = 5
    read_timeout: float = 10
    _conn: pymysql.connections.Connection | None = field(default=None, repr=False)

    def fresh(self, *, read_timeout: float | None = None) -> Kept:
        """Another connection to the same server (a statement that blocks must not hold this one)."""
        return Kept(
            self.socket,
            self.host,
            self.port,
            self.user,
            self.password,
            self.connect_timeout,
            read_timeout if read_timeout is not None else self.read_timeout,
        )

    def _cursor(self) -> pymysql.cursors.Cursor:
        if self._conn is None:
            where = {"unix_socket": self.socket} if self.socket else {"host": self.host, "port": self.port}
            self._conn = pymysql.connect(
                **where,
                user=self.user,
                password=self.password,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                write_timeout=self.read_timeout,
                autocommit=True,
            )
        return self._conn.cursor()

    def rows(self, sql: str) -> list[list[str]]:
        try:
            with self._cursor() as cur:
                cur.execute(sql)
                return [["" if v is None else str(v) for v in row] for row in cur.fetchall()]
        except (pymysql.MySQLError, OSError) as e:
            self.close()
            raise SqlError(f"{self.describe()}: {e}") from None

    def value(self, sql: str) -> str:
        rows = self.rows(sql)
        return rows[0][0] if rows and rows[0] else ""

    def status(self, sql: str) -> dict[str, str]:
        """The first row of a statement like SHOW SLAVE STATUS as a dict ({} for none)."""
        try:
            with self._cursor() as cur:
                cur.execute(sql)
                row = cur.fetchone()
                names = [d[0] for d in cur.description or ()]
        except (pymysql.MySQLError, OSError) as e:
            self.close()
            raise SqlError(f"{self.describe()}: {e}") from None
        return {} if row is None else {n: "" if v is None else str(v) for n, v in zip(names, row, strict=False)}

    def execute(self, sql: str) -> None:
        """Statements separated by ";\n" (as the mariadb client takes them), one by one."""
        for statement in (s.strip() for s in sql.split(";\n")):
            if statement:
                self.rows(statement.rstrip(";"))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def describe(self) -> str:
        return f"the local server ({self.socket})" if self.socket else f"{self.user}@{self.host}:{self.port}"


@dataclass
class Peer:
    address: str
    answered: bool
    read_only: bool = True
    master_host: str = ""
    io_running: str = ""
    slave_pos: str = ""


def fence(local: Kept, *, seconds: float = 15.0) -> list[str]:
    """read_only ON, never waiting out a commit that waits for a semi-sync acknowledgement.

    SET GLOBAL read_only first takes the global read lock (new commits wait behind it, and fail as read-only once it
    is set), then waits for the commits under way: so it runs in its own connection while this one cuts, again
    and again, the connections whose commit waits for an acknowledgement. Such a commit was never acknowledged
    and stays so; left alone, it would be acknowledged without a replica once the semi-sync timeout ran out.
    Returns notes of what it did; SqlError when read_only could not be set within `seconds`."""
    failed: list[SqlError] = []

    setter = local.fresh(read_timeout=seconds + 5)

    def set_read_only() -> None:
        try:
            setter.execute(f"SET SESSION lock_wait_timeout = {int(seconds)};\nSET GLOBAL read_only = ON;\n")
        except SqlError as e:
            failed.append(e)
        finally:
            setter.close()

    thread = threading.Thread(target=set_read_only, daemon=True)
    thread.start()
    cut: set[str] = set()
    deadline = time.monotonic() + seconds
    while thread.is_alive() and time.monotonic() < deadline:
        for (waiting,) in local.rows(
            f"SELECT ID FROM information_schema.PROCESSLIST WHERE STATE LIKE {quote(WAITING_FOR_ACK + '%')}"
        ):
            if waiting not in cut:
                cut.add(waiting)
                with contextlib.suppress(SqlError):  # gone already
                    local.execute(f"KILL CONNECTION {int(waiting)};\n")
        thread.join(0.1)
    if failed or thread.is_alive():
        raise failed[0] if failed else SqlError(f"read_only not set within {seconds:.0f}s")
    return [f"cut {len(cut)} connections waiting for a semi-sync acknowledgement", "read_only ON"]


@dataclass
class Guard:
    config: GuardConfig
    local: Kept
    clock: Callable[[], float] = time.monotonic
    last_seen: float = field(default_factory=time.monotonic)  # when the monitor or a replica last vouched
    started: float = field(default_factory=time.monotonic)
    fenced: bool = False
    _peers: dict[str, Kept] = field(default_factory=dict)

    def _peer(self, address: str) -> Peer:
        server = self._peers.get(address)
        if server is None:
            password = Path(self.config.password_file).read_text().strip()
            server = self._peers[address] = Kept(
                host=address,
                port=self.config.port,
                user=self.config.peer_user,
                password=password,
                connect_timeout=PEER_CONNECT_TIMEOUT,
                read_timeout=PEER_READ_TIMEOUT,
            )
        try:
            read_only = server.value("SELECT @@read_only") == "1"
            status = server.status("SHOW SLAVE STATUS")
        except SqlError:
            self._peers.pop(address, None)  # the password is read again with the next connection
            return Peer(address, answered=False)
        return Peer(
            address,
            answered=True,
            read_only=read_only,
            master_host=status.get("Master_Host", ""),
            io_running=status.get("Slave_IO_Running", ""),
            slave_pos=status.get("Gtid_Slave_Pos", ""),
        )

    def peers(self) -> list[Peer]:
        """Every peer, asked side by side (a cut-off host waits one connect timeout, not one per peer)."""
        if not self.config.peers:
            return []
        with ThreadPoolExecutor(max_workers=len(self.config.peers)) as pool:
            return list(pool.map(self._peer, self.config.peers))

    def look(self) -> tuple[bool, float | None]:
        """Whether the local server is read-only, and the seconds since the monitor's kept connection last ran a
        statement (PROCESSLIST.TIME_MS resets with each; None without one): one round trip a tick."""
        read_only, age = self.local.rows(
            "SELECT @@read_only, (SELECT MIN(TIME_MS) FROM information_schema.PROCESSLIST "
            f"WHERE USER = {quote(MONITOR_USER)})"
        )[0]
        return read_only == "1", float(age) / 1000 if age else None

    def tick(self) -> str:
        """One look; returns what it decided ("" for nothing to do)."""
        read_only, age = self.look()
        if age is not None and age >= self.config.fence_after:
            age = None  # the monitor spoke too long ago: not seen
        if read_only:
            self.last_seen = self.clock()
            return "" if age is not None else self._maybe_resume()  # with a monitor running, the monitor decides
        if age is not None:
            self.last_seen = max(self.last_seen, self.clock() - age)  # when the monitor last spoke, not now
            return ""
        peers = self.peers()
        if any(p.answered and p.master_host == self.config.address and p.io_running == "Yes" for p in peers):
            self.last_seen = self.clock()
            return ""
        alone = self.clock() - self.last_seen
        if alone < self.config.fence_after:
            return ""
        notes = fence(self.local)
        self.fenced = True
        return f"fenced after {alone:.1f}s without the monitor or a replica: {', '.join(notes)}"

    def _maybe_resume(self) -> str:
        """Writable again when the peers show this is still the primary (see the module doc)."""
        if self.clock() - self.started < self.config.fence_after or not self.config.peers:
            return ""  # a running monitor has reconnected by then; alone, nothing shows it is the primary
        if self.local.status("SHOW SLAVE STATUS"):
            return ""  # a replica is never made writable here
        peers = self.peers()
        me = self.config.address
        if not all(p.answered and p.read_only and p.master_host == me and p.io_running == "Yes" for p in peers):
            return ""
        mine = self.local.value("SELECT @@gtid_binlog_pos")
        have = Position.parse(mine)
        if not all(have.covers(Position.parse(p.slave_pos)) for p in peers):
            return ""
        self.local.execute("SET GLOBAL rpl_semi_sync_master_enabled = ON;\nSET GLOBAL read_only = OFF;\n")
        self.fenced = False
        return f"writable again: every peer follows this host and none is ahead of {mine or '(empty)'}"


def run(config_path: Path, socket: str, stopping: Callable[[], bool]) -> int:
    """The guard's loop until `stopping()`; a server that does not answer is retried every tick."""
    guard = Guard(GuardConfig.load(config_path), Kept(socket=socket))
    guard.started = guard.last_seen = time.monotonic()
    LOG.info("db-guard: watching %s (fence after %.0fs)", guard.config.address, guard.config.fence_after)
    while not stopping():
        started = time.monotonic()
        try:
            decided = guard.tick()
        except SqlError as e:
            decided = ""
            LOG.warning("db-guard: %s", e)
        if decided:
            LOG.warning("db-guard: %s", decided)
        time.sleep(max(0.0, TICK - (time.monotonic() - started)))
    return 0
