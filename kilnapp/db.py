"""Database access with PyMySQL: writes go to the primary, reads to this app node's replica (or the primary).

The primary is the one writable server among the db hosts (read_only OFF), found by asking them, the one roles.yaml
names first, and kept until a write fails: after a failover the app follows the new primary without being
reconfigured. Two writable servers at once is a split brain: no write goes anywhere until one is read-only again.

Each worker keeps one connection per database server (Connections): a MariaDB handshake per request was most of
what a request cost the app and the database, and under load it is what made a starved app node fall behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pymysql

from kilnapp.config import Config

CONNECT_TIMEOUT = 2
QUERY_TIMEOUT = 5
NOTES_TABLE = """CREATE TABLE IF NOT EXISTS notes (
    id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
    text VARCHAR(500) NOT NULL,
    app_host VARCHAR(64) NOT NULL,
    created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) CHARACTER SET utf8mb4"""
MAX_NOTE = 500


READ_ONLY = 1290  # ER_OPTION_PREVENTS_STATEMENT: the server is read-only (a replica, or a demoted primary)


class NoWriter(pymysql.err.OperationalError):
    """No db server is writable, or more than one is (a split brain): no write is sent anywhere."""


class Connections:
    """One open connection per database address, for one worker process (gunicorn's sync workers serve one request
    at a time; nothing here is shared between threads), and the writable server last found."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._open: dict[str, pymysql.connections.Connection] = {}
        self.writer: str | None = None

    @contextlib.contextmanager
    def to(self, host: str) -> Iterator[pymysql.connections.Connection]:
        """The kept connection to `host`, checked with a COM_PING first (one round trip; a connection the server
        closed is opened again, with the password file read again). A statement is never retried: a failure
        drops the connection and reaches the caller, so a write is not sent twice."""
        conn = self._open.pop(host, None)
        if conn is not None:
            try:
                conn.ping(reconnect=False)
            except (pymysql.MySQLError, OSError):
                _close(conn)
                conn = None
        if conn is None:
            conn = self._connect(host)
        try:
            yield conn
        except BaseException:
            _close(conn)
            raise
        self._open[host] = conn

    def _connect(self, host: str) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=host,
            port=self.config.db_port,
            user=self.config.db_user,
            password=self.config.password(),
            database=self.config.db_name,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=QUERY_TIMEOUT,
            write_timeout=QUERY_TIMEOUT,
            charset="utf8mb4",
            cursorclass=pymysql.cursors.DictCursor,
            autocommit=True,
        )


def _close(conn: pymysql.connections.Connection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def server_identity(db: Connections, host: str) -> dict[str, Any]:
    """Which database server answered: its hostname, server_id and whether it is read-only (a replica)."""
    with db.to(host) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@hostname AS hostname, @@server_id AS server_id, @@read_only AS read_only")
        row = cur.fetchone()
    return {"address": host, **row, "read_only": bool(row["read_only"])}


def _writable(db: Connections, host: str) -> bool | None:
    """Whether `host` takes writes (None: it does not answer)."""
    try:
        with db.to(host) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@read_only AS read_only")
            return not cur.fetchone()["read_only"]
    except (pymysql.MySQLError, OSError):
        return None


def writer(db: Connections) -> str:
    """The writable db server: the one last found, else asked for among the candidates (NoWriter when none is, or
    when more than one is)."""
    if db.writer is not None:
        return db.writer
    writable = [h for h in db.config.candidates if _writable(db, h)]
    if len(writable) != 1:
        said = "none of " + ", ".join(db.config.candidates) if not writable else " and ".join(writable)
        raise NoWriter(2003, f"no single writable database server: {said}")
    db.writer = writable[0]
    return db.writer


def forget_writer(db: Connections) -> None:
    """After a write failed: the next one looks for the writable server again (a failover may have moved it)."""
    db.writer = None


def ping(db: Connections) -> str:
    """The writable server, checked with a statement; raises when there is none or it does not answer."""
    host = writer(db)
    try:
        with db.to(host) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@read_only AS read_only")
            if cur.fetchone()["read_only"]:
                raise pymysql.err.OperationalError(READ_ONLY, f"{host} is read-only now")
    except (pymysql.MySQLError, OSError):
        forget_writer(db)
        raise
    return host


def add_note(db: Connections, text: str) -> dict[str, Any]:
    """Insert a note on the writable server. Refused as read-only (nothing written), it is sent once more to the
    server found writable then; any other failure is not retried (the write may have happened)."""
    config = db.config
    for attempt in (1, 2):
        host = writer(db)
        try:
            with db.to(host) as conn, conn.cursor() as cur:
                cur.execute(NOTES_TABLE)
                cur.execute("INSERT INTO notes (text, app_host) VALUES (%s, %s)", (text[:MAX_NOTE], config.host))
                note_id = cur.lastrowid
        except pymysql.MySQLError as e:
            forget_writer(db)
            if attempt == 1 and e.args and e.args[0] == READ_ONLY:
                continue
            raise
        except OSError:
            forget_writer(db)
            raise
        return {"id": note_id, "text": text[:MAX_NOTE], "app_host": config.host, "db": host}
    raise AssertionError("unreachable")


def reader(db: Connections) -> str:
    """The replica for reads when it answers, else the writable server (reads keep working while a replica is
    down); with no writable server found, the replica or the named primary, whichever answers."""
    config = db.config
    try:
        with db.to(config.db_read_host):
            return config.db_read_host
    except (pymysql.MySQLError, OSError):
        pass
    try:
        return writer(db)
    except pymysql.MySQLError:
        return config.db_write_host


def list_notes(db: Connections, host: str, limit: int = 50) -> list[dict[str, Any]]:
    with db.to(host) as conn, conn.cursor() as cur:
        try:
            cur.execute("SELECT id, text, app_host, created FROM notes ORDER BY id DESC LIMIT %s", (limit,))
        except pymysql.err.ProgrammingError:  # no note written yet: the table does not exist
            return []
        rows = cur.fetchall()
    return [{**r, "created": r["created"].isoformat()} for r in rows]
