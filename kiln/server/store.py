"""The server's state: hosts, their events, unknown machines and the one-time secrets rule.

SQLAlchemy Core over SQLite by default (`sqlite:///state/kiln.db`, WAL, created on first use) or
PostgreSQL (`postgresql://user:pass@host/db`, through psycopg) when several servers share one state.
Every change is one transaction; a host's row is locked while an event updates it (SELECT ... FOR
UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent events for one host never interleave.
The `reprovision` task opens the same database beside a running server.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from kiln.server.inputs import Event
from kiln.server.states import PXE_STEP, State, next_state, step_index

TIMELINE_LIMIT = 200  # events per host returned by hosts(); all of them stay in the table
UNKNOWN_LIMIT = 1000  # unknown machines remembered; beyond that new ones are not recorded

metadata = sa.MetaData()

hosts_table = sa.Table(
    "hosts",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False, server_default="1"),  # provisioning number
    sa.Column("state", sa.String(16), nullable=False, server_default=State.waiting.value),
    sa.Column("installed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("max_ok_index", sa.Integer, nullable=False, server_default="-1"),
    sa.Column("last_step", sa.String(16)),
    sa.Column("last_status", sa.String(8)),
    sa.Column("last_detail", sa.Text),
    sa.Column("last_received", sa.Float),
    sa.Column("last_duration", sa.Float),
    sa.Column("step_started", sa.Float),  # when the current step reported start
    sa.Column("armed_at", sa.Float),
    sa.Column("secrets_served_at", sa.Float),
    sa.Column("secrets_denied", sa.Integer, nullable=False, server_default="0"),
    sa.Column("secrets_denied_at", sa.Float),
    sa.Column("updated", sa.Float),  # the server's clock at the row's last change: GET /v1/hosts?since= reads it
)

events_table = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(64), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("step", sa.String(16), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Column("at", sa.String(64)),  # the host's own clock, as it sent it
    sa.Column("received", sa.Float, nullable=False),  # the server's clock
    sa.Column("duration", sa.Float),
    sa.Index("events_host_generation", "host", "generation", "id"),
)

unknown_table = sa.Table(
    "unknown_machines",
    metadata,
    sa.Column("mac", sa.String(17), primary_key=True),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
)


# The statements on the hot path (every event), built once: SQLAlchemy then reuses their compiled form.
_SELECT_HOST = sa.select(hosts_table).where(hosts_table.c.name == sa.bindparam("host_name"))
_SELECT_HOST_LOCKED = _SELECT_HOST.with_for_update()
_UPDATE_AFTER_EVENT = (
    hosts_table.update()
    .where(hosts_table.c.name == sa.bindparam("host_name"))
    .values(
        {
            c: sa.bindparam(c)
            for c in (
                "state",
                "last_step",
                "last_status",
                "last_detail",
                "last_received",
                "last_duration",
                "step_started",
                "max_ok_index",
                "installed",
                "updated",
            )
        }
    )
)
_INSERT_EVENT = events_table.insert()
_SELECT_INSTALLED = sa.select(hosts_table.c.installed).where(hosts_table.c.name == sa.bindparam("host_name"))
_GRANT_SECRETS = (
    hosts_table.update()
    .where(hosts_table.c.name == sa.bindparam("host_name"), hosts_table.c.secrets_served_at.is_(None))
    .values(secrets_served_at=sa.bindparam("now"), updated=sa.bindparam("now"))
)
_REFUSE_SECRETS = (
    hosts_table.update()
    .where(hosts_table.c.name == sa.bindparam("host_name"))
    .values(
        secrets_denied=hosts_table.c.secrets_denied + 1,
        secrets_denied_at=sa.bindparam("now"),
        updated=sa.bindparam("now"),
    )
    .returning(hosts_table.c.secrets_denied)
)


class UnknownHost(KeyError):
    pass


def _timelines(names: list[str] | None) -> Any:
    """Each host's last TIMELINE_LIMIT events of its current provisioning, oldest first: the newest rows per host
    numbered in SQL (a window function), so a host with 45,000 events costs what one with 200 does."""
    e = events_table
    numbered = sa.select(
        e, sa.func.row_number().over(partition_by=e.c.host, order_by=e.c.id.desc()).label("newest")
    ).join(hosts_table, sa.and_(hosts_table.c.name == e.c.host, hosts_table.c.generation == e.c.generation))
    if names is not None:
        numbered = numbered.where(e.c.host.in_(names))
    inner = numbered.subquery()
    columns = [inner.c[c.name] for c in e.columns]
    return sa.select(*columns).where(inner.c.newest <= TIMELINE_LIMIT).order_by(inner.c.host, inner.c.id)


def engine_for(url: str, project: Path) -> Engine:
    """An engine for a database URL: sqlite:///relative/path is relative to the project directory;
    postgresql:// and postgres:// use psycopg (version 3)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ""
        if not db or db == ":memory:":
            raise ValueError("an SQLite state database needs a file path, e.g. sqlite:///state/kiln.db")
        path = Path(db) if Path(db).is_absolute() else project / db
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed.set(database=str(path)), pool_size=8, max_overflow=32)
        _sqlite_transactions(engine)
        return engine
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, pool_size=8, max_overflow=32, pool_pre_ping=True)
    raise ValueError(f"unsupported database {parsed.drivername!r} (expected sqlite:///PATH or postgresql://...)")


def _sqlite_transactions(engine: Engine) -> None:
    """Let kiln, not the sqlite3 module, begin transactions: BEGIN IMMEDIATE for writes takes the
    write lock up front, so two writers never deadlock on a lock upgrade (SQLAlchemy's recipe)."""

    @sa.event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("kiln_write") else "BEGIN")


@dataclass(frozen=True)
class Claim:
    """The outcome of a bundle fetch for the one-time secrets rule."""

    granted: bool
    denied_before: int  # how many fetches were refused secrets before this one


class StateStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._writers: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self._pg else threading.Lock()
        )

    @property
    def threads(self) -> int:
        """How many threads may usefully use this store at once."""
        return 8 if self._pg else 1

    @classmethod
    def open(cls, url: str, project: Path) -> StateStore:
        store = cls(engine_for(url, project))
        metadata.create_all(store.engine)
        store._add_new_columns()
        return store

    def _add_new_columns(self) -> None:
        """A database made by an older kiln lacks the columns added since: add them (nullable, so no rewrite)."""
        inspector = sa.inspect(self.engine)
        for table in metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    with self._transaction() as conn:
                        conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One write transaction. On SQLite, this process's writers queue on a lock first: waiting there
        wakes at once, where SQLite's own busy handler sleeps in steps of up to 100 ms."""
        with self._writers, self.engine.connect().execution_options(kiln_write=True) as conn, conn.begin():
            yield conn

    def _locked_host(self, conn: Connection, name: str) -> Any:
        row = conn.execute(_SELECT_HOST_LOCKED if self._pg else _SELECT_HOST, {"host_name": name}).mappings().first()
        if row is None:
            raise UnknownHost(name)
        return row

    def ensure_hosts(self, names: Iterable[str]) -> None:
        """A row for every host of the cluster (new hosts start armed, in state waiting)."""
        wanted = set(names)
        with self._transaction() as conn:
            have = set(conn.execute(sa.select(hosts_table.c.name)).scalars())
            missing = sorted(wanted - have)
            if missing:
                now = time.time()
                conn.execute(hosts_table.insert(), [{"name": n, "armed_at": now, "updated": now} for n in missing])

    def record_event(self, name: str, event: Event, *, now: float | None = None) -> State:
        """Store one event and move the host's state; raise UnknownHost for a host without a row."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            host = self._locked_host(conn, name)
            duration = event.duration
            if (
                duration is None
                and event.status != "start"
                and host["step_started"] is not None
                and host["last_step"] == event.step
            ):
                duration = max(0.0, now - host["step_started"])
            state = next_state(event.step, event.status)
            ok = event.status == "ok"
            conn.execute(
                _UPDATE_AFTER_EVENT,
                {
                    "host_name": name,
                    "state": state.value,
                    "last_step": event.step,
                    "last_status": event.status,
                    "last_detail": event.detail,
                    "last_received": now,
                    "last_duration": duration,
                    "step_started": now if event.status == "start" else None,
                    "max_ok_index": max(host["max_ok_index"], step_index(event.step)) if ok else host["max_ok_index"],
                    "installed": host["installed"] or (ok and event.step == "install"),
                    "updated": now,
                },
            )
            conn.execute(
                _INSERT_EVENT,
                {
                    "host": name,
                    "generation": host["generation"],
                    "step": event.step,
                    "status": event.status,
                    "detail": event.detail,
                    "at": event.at,
                    "received": now,
                    "duration": duration,
                },
            )
        return state

    def record_pxe(self, name: str, detail: str) -> None:
        """The server handed the installer script to the host: it is booting."""
        self.record_event(name, Event(PXE_STEP, "ok", detail, None, None))

    def is_installed(self, name: str) -> bool:
        with self.engine.connect() as conn:
            installed = conn.execute(_SELECT_INSTALLED, {"host_name": name}).scalar()
        if installed is None:
            raise UnknownHost(name)
        return bool(installed)

    def claim_secrets(self, name: str, *, now: float | None = None) -> Claim:
        """Grant the host its secrets if this provisioning has not had them yet; count a refusal otherwise.

        The grant is one conditional UPDATE, so of two concurrent first fetches exactly one wins."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            if conn.execute(_GRANT_SECRETS, {"host_name": name, "now": now}).rowcount:
                return Claim(True, 0)
            result = conn.execute(_REFUSE_SECRETS, {"host_name": name, "now": now}).scalar()
        if result is None:
            raise UnknownHost(name)
        return Claim(False, result - 1)

    def rearm(self, name: str, *, now: float | None = None) -> int:
        """Start a new provisioning for the host: installer on next PXE boot, secrets once more,
        state waiting, alerts cleared. Return the new provisioning number."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            host = self._locked_host(conn, name)
            generation = host["generation"] + 1
            conn.execute(
                hosts_table.update()
                .where(hosts_table.c.name == name)
                .values(
                    generation=generation,
                    state=State.waiting.value,
                    installed=False,
                    max_ok_index=-1,
                    last_step=None,
                    last_status=None,
                    last_detail=None,
                    last_received=None,
                    last_duration=None,
                    step_started=None,
                    armed_at=now,
                    secrets_served_at=None,
                    secrets_denied=0,
                    secrets_denied_at=None,
                    updated=now,
                )
            )
        return generation

    def note_unknown(self, mac: str, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._transaction() as conn:
            updated = conn.execute(
                unknown_table.update()
                .where(unknown_table.c.mac == mac)
                .values(last_seen=now, requests=unknown_table.c.requests + 1)
            ).rowcount
            if (
                not updated
                and conn.execute(sa.select(sa.func.count()).select_from(unknown_table)).scalar_one() < UNKNOWN_LIMIT
            ):
                conn.execute(unknown_table.insert().values(mac=mac, first_seen=now, last_seen=now, requests=1))

    def forget_unknown(self, macs: Iterable[str]) -> None:
        """Drop unknown-machine entries for MACs that roles.yaml now lists."""
        macs = list(macs)
        if macs:
            with self._transaction() as conn:
                conn.execute(unknown_table.delete().where(unknown_table.c.mac.in_(macs)))

    def host_rows(
        self, names: Iterable[str] | None = None, *, timeline: bool = True, since: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each host's row (only those changed at or after `since`, server clock, when given), with its current
        provisioning's last TIMELINE_LIMIT events, oldest first, under "timeline" (the limit is in the query)."""
        with self.engine.connect() as conn:
            query = sa.select(hosts_table)
            if names is not None:
                query = query.where(hosts_table.c.name.in_(list(names)))
            if since is not None:
                query = query.where(hosts_table.c.updated >= since)
            rows = {r["name"]: dict(r) for r in conn.execute(query).mappings()}
            for row in rows.values():
                row["timeline"] = []
            if timeline and rows:
                only = list(rows) if names is not None or since is not None else None
                for ev in conn.execute(_timelines(only)).mappings():
                    rows[ev["host"]]["timeline"].append(dict(ev))
        return rows

    def alert_rows(self) -> dict[str, dict[str, Any]]:
        """The rows of hosts that need an operator: failed, or refused their secrets (every poll shows them all)."""
        with self.engine.connect() as conn:
            query = sa.select(hosts_table).where(
                sa.or_(hosts_table.c.state == State.failed.value, hosts_table.c.secrets_denied > 0)
            )
            return {r["name"]: dict(r) for r in conn.execute(query).mappings()}

    def unknown_machines(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            query = sa.select(unknown_table).order_by(unknown_table.c.last_seen.desc())
            return [dict(r) for r in conn.execute(query).mappings()]
