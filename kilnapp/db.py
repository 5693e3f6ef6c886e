"""Database access with PyMySQL: writes go to the primary, reads to this app node's replica (or the primary)."""

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


@contextlib.contextmanager
def connect(config: Config, host: str) -> Iterator[pymysql.connections.Connection]:
    conn = pymysql.connect(
        host=host,
        port=config.db_port,
        user=config.db_user,
        password=config.password(),
        database=config.db_name,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=QUERY_TIMEOUT,
        write_timeout=QUERY_TIMEOUT,
        charset="utf8mb4",
        cursorclass=pymysql.cursors.DictCursor,
        autocommit=True,
    )
    try:
        yield conn
    finally:
        conn.close()


def server_identity(config: Config, host: str) -> dict[str, Any]:
    """Which database server answered: its hostname, server_id and whether it is read-only (a replica)."""
    with connect(config, host) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@hostname AS hostname, @@server_id AS server_id, @@read_only AS read_only")
        row = cur.fetchone()
    return {"address": host, **row, "read_only": bool(row["read_only"])}


def ping(config: Config) -> None:
    with connect(config, config.db_write_host) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")


def add_note(config: Config, text: str) -> dict[str, Any]:
    with connect(config, config.db_write_host) as conn, conn.cursor() as cur:
        cur.execute(NOTES_TABLE)
        cur.execute("INSERT INTO notes (text, app_host) VALUES (%s, %s)", (text[:MAX_NOTE], config.host))
        note_id = cur.lastrowid
    return {"id": note_id, "text": text[:MAX_NOTE], "app_host": config.host, "db": config.db_write_host}


def reader(config: Config) -> str:
    """The replica for reads when it answers, else the primary (reads keep working while a replica is down)."""
    if config.db_read_host == config.db_write_host:
        return config.db_write_host
    try:
        with connect(config, config.db_read_host):
            return config.db_read_host
    except (pymysql.MySQLError, OSError):
        return config.db_write_host


def list_notes(config: Config, host: str, limit: int = 50) -> list[dict[str, Any]]:
    with connect(config, host) as conn, conn.cursor() as cur:
        try:
            cur.execute("SELECT id, text, app_host, created FROM notes ORDER BY id DESC LIMIT %s", (limit,))
        except pymysql.err.ProgrammingError:  # no note written yet: the table does not exist
            return []
        rows = cur.fetchall()
    return [{**r, "created": r["created"].isoformat()} for r in rows]
