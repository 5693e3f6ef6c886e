"""The server's state: hosts, their events, their credentials, unknown machines, the access log, the data
tier as the failover monitor last reported it (its view, the last backup, its events), and the alerts
Alertmanager sent (by fingerprint: firing until a notification says resolved).

A host's credential: arming it (first sight, ./inv reprovision) mints a one-time enrolment token for that
provisioning, valid for ENROL_TTL; the host's first bundle request presents it with the host key it made, and
the key is bound. Its secrets are handed out to that credential (again, if a response was lost) until the host
acknowledges them (its `secrets ok` event); then never again without a re-arm, and the token is spent.

SQLAlchemy Core over SQLite by default (`sqlite:///state/kiln.db`, WAL, created on first use) or
PostgreSQL (`postgresql://user:pass@host/db`, through psycopg) when several servers share one state.
Every change is one transaction; a host's row is locked while an event updates it (SELECT ... FOR
UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent events for one host never interleave.
The `reprovision` task opens the same database beside a running server.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets as pysecrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url

from kiln.server.alerts import Alert
from kiln.server.dbreport import ALERT_KINDS, DbEvent
from kiln.server.inputs import Event
from kiln.server.states import CONVERGE_STEP, PXE_STEP, State, next_state, step_index

TIMELINE_LIMIT = 200  # events per host returned by hosts(); older ones stay until EVENTS_KEPT per host
EVENTS_KEPT = 2000  # events per host kept in the table; older ones go (retention)
UNKNOWN_LIMIT = 1000  # unknown machines remembered; beyond that the least recently seen is forgotten
ACCESS_KEPT = 20000  # access log entries kept; older ones go
DB_EVENTS_KEPT = 1000  # data-tier events kept (the monitor's and the backups'); older ones go
DB_EVENTS_SHOWN = 50  # the newest ones GET /v1/db returns
DB_ALERT_SECONDS = 24 * 3600.0  # a failover-kind event stays an alert this long after it happened
FIRING_KEPT = 1000  # firing alerts kept (a flood of distinct ones cannot grow the table): the least recently told go
RESOLVED_KEPT = 200  # resolved alerts kept, the most recently resolved; GET /v1/alerts lists them
ENROL_TTL = 7 * 24 * 3600.0  # seconds an enrolment token stays valid after arming: re-arm after that

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
    sa.Column("enrol_token", sa.String(64)),  # this provisioning's one-time token; null once spent
    sa.Column("enrol_expires", sa.Float),
    sa.Column("host_key", sa.String(64)),  # the Ed25519 public key bound at enrolment (base64)
    sa.Column("enrolled_at", sa.Float),
    sa.Column("enrolled_from", sa.String(64)),  # the peer address that enrolled
    sa.Column("secrets_acked_at", sa.Float),  # the host acknowledged its secrets: never handed out again
    sa.Column("credential_alert", sa.Text),  # its credential was refused in a way an operator must see (re-arm clears)
    sa.Column("running_generation", sa.Integer),  # the bundle generation the host runs (converge ok, or its poll)
    sa.Column("converge_error", sa.Text),  # the last generation it failed to apply, and why (cleared by a success)
    sa.Column("retired_at", sa.Float),  # roles.yaml dropped it: credential revoked, listed as retired
    sa.Column("retired_as", sa.Text),  # "role ip mac" it had, for the listing (roles.yaml no longer says)
    # an enrolment and an installer's event find their host by its token: without the index, a scan of every row
    # (a 1000-host boot storm's enrolments spent a third of their time there)
    sa.Index("hosts_enrol_token", "enrol_token"),
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

meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

access_table = sa.Table(
    "access",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("peer", sa.String(64), nullable=False),
    sa.Column("host", sa.String(64)),
    sa.Column("action", sa.String(32), nullable=False),  # enrol, bundle, secrets, event, hosts, shared, ...
    sa.Column("outcome", sa.String(16), nullable=False),  # granted | refused
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
)

unknown_table = sa.Table(
    "unknown_machines",
    metadata,
    sa.Column("mac", sa.String(17), primary_key=True),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
)

db_state_table = sa.Table(
    "db_state",
    metadata,
    sa.Column("key", sa.String(32), primary_key=True),  # "view" (the monitor's latest look), "backup" (the last one)
    sa.Column("at", sa.Float, nullable=False),  # when it happened (the reporter's clock): an older report never wins
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("received", sa.Float, nullable=False),
)

db_events_table = sa.Table(
    "db_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),  # the sender's: a resent event is kept once
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("host", sa.String(64), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),  # the reporter's clock
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("backup", sa.Text),  # JSON, for kind backup
)

alerts_table = sa.Table(
    "alerts",
    metadata,
    sa.Column("fingerprint", sa.String(16), primary_key=True),  # Alertmanager's: one alert (its label set)
    sa.Column("status", sa.String(8), nullable=False),  # firing | resolved
    sa.Column("starts_at", sa.Float, nullable=False),  # Alertmanager's clock: which episode of the alert this is
    sa.Column("ends_at", sa.Float),
    sa.Column("labels", sa.Text, nullable=False),  # JSON
    sa.Column("annotations", sa.Text, nullable=False),  # JSON
    sa.Column("generator_url", sa.Text, nullable=False, server_default=""),
    sa.Column("received", sa.Float, nullable=False),  # the server's clock: first told of this episode
    sa.Column("updated", sa.Float, nullable=False),  # the server's clock: last told
    sa.Index("alerts_status_updated", "status", "updated"),
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


class NotAStateDatabase(ValueError):
    """A database URL that does not lead to kiln's state (StateStore.open without create)."""


def engine_for(url: str, project: Path, *, create: bool = True) -> Engine:
    """An engine for a database URL: sqlite:///relative/path is relative to the project directory (its directory
    made when `create`, else NotAStateDatabase for a missing file); postgresql:// and postgres:// use psycopg
    (version 3)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ""
        if not db or db == ":memory:":
            raise ValueError("an SQLite state database needs a file path, e.g. sqlite:///state/kiln.db")
        path = Path(db) if Path(db).is_absolute() else project / db
        if not create and not path.is_file():
            raise NotAStateDatabase(f"{url}: no such state database ({path} does not exist)")
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


class CredentialError(Exception):
    """A request whose credential does not hold; `status` is the HTTP answer (401 unknown, 403 not yours)."""

    def __init__(self, status: int, reason: str, host: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.host = host


@dataclass(frozen=True)
class Published:
    generation: int
    digest: str  # sha256 of the roles text
    roles: str  # the roles.yaml text (empty: only its digest was published, by an older kiln)
    retiring: tuple[str, ...]  # hosts removed from roles.yaml, drained but still admitted, in this generation
    file_digest: str  # the server's --roles file when it last started


@dataclass(frozen=True)
class Enrolment:
    """The outcome of a host's enrolment: which host, whether its bundle carries secrets, whether the key was
    bound just now (a retry after a lost response binds nothing new)."""

    host: str
    secrets: bool
    first: bool


def _minted(now: float) -> dict[str, Any]:
    """The credential columns of a newly armed provisioning."""
    return {
        "enrol_token": pysecrets.token_urlsafe(32),
        "enrol_expires": now + ENROL_TTL,
        "host_key": None,
        "enrolled_at": None,
        "enrolled_from": None,
        "secrets_acked_at": None,
        "secrets_served_at": None,
        "secrets_denied": 0,
        "secrets_denied_at": None,
        "credential_alert": None,
    }


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

    @property
    def local(self) -> bool:
        """SQLite: a file on this machine, a short call takes well under a millisecond (no network round trip)."""
        return not self._pg

    @classmethod
    def open(cls, url: str, project: Path, *, create: bool = True) -> StateStore:
        """The state database at `url` (engine_for), its tables created when `create`; without it (a tool that
        changes what a running server uses, e.g. reprovision) NotAStateDatabase for a database without kiln's
        tables, and for an SQLite file that does not exist, which is left uncreated: a mistyped URL is refused,
        not answered with a new empty database."""
        store = cls(engine_for(url, project, create=create))
        if create:
            metadata.create_all(store.engine)
        elif not sa.inspect(store.engine).has_table(hosts_table.name):
            store.close()
            raise NotAStateDatabase(f"{url}: not a kiln state database (it has no {hosts_table.name} table)")
        store._add_new_columns()
        return store

    def _add_new_columns(self) -> None:
        """A database made by an older kiln lacks the columns and indexes added since: add them (columns nullable,
        so no rewrite)."""
        inspector = sa.inspect(self.engine)
        for table in metadata.sorted_tables:
            if not inspector.has_table(table.name):  # a tool opening an older database: its server makes them
                continue
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    with self._transaction() as conn:
                        conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
            indexed = {i["name"] for i in inspector.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in indexed:
                    with self._transaction() as conn:
                        index.create(conn, checkfirst=True)

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
            rows = [(r.name, r.state) for r in conn.execute(sa.select(hosts_table.c.name, hosts_table.c.state))]
            have = {name for name, _ in rows}
            back = sorted(name for name, state in rows if name in wanted and state == State.retired.value)
            missing = sorted(wanted - have)
            if missing:
                now = time.time()
                conn.execute(
                    hosts_table.insert(),
                    [{"name": n, "armed_at": now, "updated": now, **_minted(now)} for n in missing],
                )
        for name in back:  # listed again after it was retired: a new provisioning, as for a new host
            self.rearm(name)

    def record_event(
        self,
        name: str,
        event: Event,
        *,
        now: float | None = None,
        admit: Callable[[str | None, str], None] | None = None,
    ) -> State:
        """Store one event and move the host's state; raise UnknownHost for a host without a row. `admit(host_key,
        state)` sees the host's row first, in the same transaction: what it raises leaves nothing written."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            host = self._locked_host(conn, name)
            if admit is not None:
                admit(host["host_key"], host["state"])
            duration = event.duration
            if (
                duration is None
                and event.status != "start"
                and host["step_started"] is not None
                and host["last_step"] == event.step
            ):
                duration = max(0.0, now - host["step_started"])
            ok = event.status == "ok"
            converge = event.step == CONVERGE_STEP
            state = State(host["state"]) if converge else next_state(event.step, event.status)
            if converge and event.status != "start":
                conn.execute(
                    hosts_table.update()
                    .where(hosts_table.c.name == name)
                    .values(
                        running_generation=event.generation if ok else host["running_generation"],
                        converge_error=None if ok else f"generation {event.generation}: {event.detail}",
                    )
                )
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
                    "max_ok_index": (
                        max(host["max_ok_index"], step_index(event.step))
                        if ok and not converge
                        else host["max_ok_index"]
                    ),
                    "installed": host["installed"] or (ok and event.step == "install"),
                    "updated": now,
                },
            )
            inserted = conn.execute(
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
            ).inserted_primary_key
            if inserted and int(inserted[0]) % 100 == 0:  # retention now and then: the host's newest EVENTS_KEPT
                e = events_table
                cutoff = (
                    sa.select(e.c.id).where(e.c.host == name).order_by(e.c.id.desc()).offset(EVENTS_KEPT).limit(1)
                ).scalar_subquery()
                conn.execute(e.delete().where(e.c.host == name, e.c.id <= cutoff))
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

    def published(self) -> Published:
        """What was published last: its generation, roles text and the hosts it drains (empty on a new database)."""
        with self.engine.connect() as conn:
            stored = dict(conn.execute(sa.select(meta_table.c.key, meta_table.c.value)).tuples().all())
        return Published(
            generation=int(stored.get("generation", "0")),
            digest=stored.get("roles_digest", ""),
            roles=stored.get("roles_text", ""),
            retiring=tuple(json.loads(stored.get("retiring", "[]"))),
            file_digest=stored.get("file_digest", ""),
        )

    def publish(
        self, digest: str, *, roles: str = "", retiring: Iterable[str] = (), floor: int = 0, file_digest: str = ""
    ) -> int:
        """The cluster's generation for these roles (sha256 `digest`, text `roles`) and hosts being drained: the same
        roles and drained hosts keep their generation, anything else is the next (a monotonic number every signed
        bundle carries; agents never go back). `floor`: the highest generation ever published, kept outside this
        database, so a new database never goes back. `file_digest`: the server's --roles file at its start."""
        drained = json.dumps(sorted(retiring))
        with self._transaction() as conn:
            stored = dict(conn.execute(sa.select(meta_table.c.key, meta_table.c.value)).tuples().all())
            generation = max(int(stored.get("generation", "0")), floor)
            same = stored.get("roles_digest") == digest and stored.get("retiring", "[]") == drained
            if not same or generation > int(stored.get("generation", "0")):
                generation += 1
            values = {"generation": str(generation), "roles_digest": digest, "retiring": drained}
            if roles:
                values["roles_text"] = roles
            if file_digest:
                values["file_digest"] = file_digest
            for key, value in values.items():
                if stored.get(key) == value:
                    continue
                if key in stored:
                    conn.execute(meta_table.update().where(meta_table.c.key == key).values(value=value))
                else:
                    conn.execute(meta_table.insert().values(key=key, value=value))
        return generation

    def note_running(self, name: str, generation: int, *, now: float | None = None) -> None:
        """The host says (signed) it runs `generation`: its poll for a newer one names it."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            conn.execute(
                hosts_table.update()
                .where(
                    hosts_table.c.name == name,
                    sa.or_(hosts_table.c.running_generation.is_(None), hosts_table.c.running_generation != generation),
                )
                .values(running_generation=generation, updated=now)
            )

    def retire(self, hosts: dict[str, str], *, now: float | None = None) -> list[str]:
        """Hosts roles.yaml no longer lists (name -> "role ip mac"): state retired, key and token revoked, so nothing
        they sign or present is accepted again. Return the names that were not retired before."""
        now = time.time() if now is None else now
        done = []
        with self._transaction() as conn:
            for name, identity in sorted(hosts.items()):
                changed = conn.execute(
                    hosts_table.update()
                    .where(hosts_table.c.name == name, hosts_table.c.state != State.retired.value)
                    .values(
                        state=State.retired.value,
                        host_key=None,
                        enrol_token=None,
                        enrol_expires=None,
                        retired_at=now,
                        retired_as=identity,
                        updated=now,
                    )
                ).rowcount
                if changed:
                    done.append(name)
        return done

    # --- credentials -----------------------------------------------------------------------------------

    def enrol(self, token: str, host_key: str, peer: str, *, now: float | None = None) -> Enrolment:
        """Bind `host_key` to the host this token was minted for; the same key again is a retry (lost response).

        Raise CredentialError: 401 for a token no armed host holds or one that expired, 403 for a token already
        bound to another key (the host is someone else's now: an operator must look)."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            query = sa.select(hosts_table).where(hosts_table.c.enrol_token == token)
            row = conn.execute(query.with_for_update() if self._pg else query).mappings().first()
            if row is None or not hmac.compare_digest(row["enrol_token"] or "", token):
                raise CredentialError(401, "no armed host holds this enrolment token (spent, or never minted)")
            name = row["name"]
            if row["enrol_expires"] is not None and row["enrol_expires"] < now:
                raise CredentialError(
                    401, f"the enrolment token of {name} expired; re-arm it: ./inv reprovision {name}", name
                )
            if row["host_key"] is not None and row["host_key"] != host_key:
                raise CredentialError(
                    403,
                    f"{name}'s enrolment token was already used by another machine (from {row['enrolled_from']}); "
                    f"if that was not {name}, its secrets are exposed: rotate them and re-arm it",
                    name,
                )
            first = row["host_key"] is None
            values: dict[str, Any] = {"host_key": host_key, "enrolled_from": peer, "secrets_served_at": now}
            conn.execute(
                hosts_table.update()
                .where(hosts_table.c.name == name)
                .values(**values, enrolled_at=now if first else row["enrolled_at"], updated=now)
            )
        return Enrolment(name, secrets=row["secrets_acked_at"] is None, first=first)

    def flag_credential(self, name: str, message: str, *, now: float | None = None) -> None:
        """Raise an alert on the host (shown until it is re-armed): its credential was misused."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            conn.execute(
                hosts_table.update().where(hosts_table.c.name == name).values(credential_alert=message, updated=now)
            )

    def credential(self, name: str) -> tuple[str | None, str] | None:
        """(the public key bound to the host's current provisioning or None, its state), as record_event's `admit`
        sees them; None for a name without a row."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(hosts_table.c.host_key, hosts_table.c.state).where(hosts_table.c.name == name)
            ).first()
        return None if row is None else (row.host_key, row.state)

    def secrets_for(self, name: str, *, now: float | None = None) -> bool:
        """Whether an authenticated bundle request of the host gets its secrets: until it acknowledged them.
        A request after that is counted (and alerts): a host that lost its secrets needs a re-arm."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            row = self._locked_host(conn, name)
            if row["secrets_acked_at"] is None:
                conn.execute(
                    hosts_table.update().where(hosts_table.c.name == name).values(secrets_served_at=now, updated=now)
                )
                return True
            conn.execute(
                hosts_table.update()
                .where(hosts_table.c.name == name)
                .values(secrets_denied=hosts_table.c.secrets_denied + 1, secrets_denied_at=now, updated=now)
            )
            return False

    def ack_secrets(self, name: str, *, now: float | None = None) -> bool:
        """The host has its secrets: they are not handed out again and its token is spent. Whether this changed."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            done = conn.execute(
                hosts_table.update()
                .where(hosts_table.c.name == name, hosts_table.c.secrets_acked_at.is_(None))
                .values(secrets_acked_at=now, enrol_token=None, updated=now)
            ).rowcount
        return bool(done)

    def token_holder(self, token: str, *, now: float | None = None, unbound: bool = False) -> str | None:
        """The host whose valid (armed, unexpired, unspent) enrolment token this is; with `unbound`, only while
        no key is bound to it yet (what authenticates an installer's events: after enrolment the host signs)."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    hosts_table.c.name, hosts_table.c.enrol_token, hosts_table.c.enrol_expires, hosts_table.c.host_key
                ).where(hosts_table.c.enrol_token == token)
            ).first()
        if row is None or not hmac.compare_digest(row.enrol_token or "", token):
            return None
        if unbound and row.host_key is not None:
            return None
        return None if row.enrol_expires is not None and row.enrol_expires < now else str(row.name)

    def armed_token(self, name: str, *, now: float | None = None) -> str | None:
        """The host's enrolment token while it is valid: what its installer and seed carry."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(hosts_table.c.enrol_token, hosts_table.c.enrol_expires).where(hosts_table.c.name == name)
            ).first()
        if row is None:
            raise UnknownHost(name)
        if row.enrol_token is None or (row.enrol_expires is not None and row.enrol_expires < now):
            return None
        return str(row.enrol_token)

    def note_access(
        self, peer: str, host: str | None, action: str, outcome: str, detail: str = "", *, now: float | None = None
    ) -> None:
        """One line of the access log (every grant and every refusal), oldest lines dropped past ACCESS_KEPT."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            inserted = conn.execute(
                access_table.insert().values(
                    at=now, peer=peer[:64], host=host, action=action, outcome=outcome, detail=detail[:500]
                )
            ).inserted_primary_key
            new_id = int(inserted[0]) if inserted else 0
            if new_id % 1000 == 0:  # retention now and then, not on every line
                conn.execute(access_table.delete().where(access_table.c.id <= new_id - ACCESS_KEPT))

    def access_log(self, *, limit: int = 100, outcome: str | None = None) -> list[dict[str, Any]]:
        """The newest access log lines first."""
        query = sa.select(access_table).order_by(access_table.c.id.desc()).limit(limit)
        if outcome is not None:
            query = query.where(access_table.c.outcome == outcome)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def rearm(self, name: str, *, now: float | None = None) -> int:
        """Start a new provisioning for the host: installer on next PXE boot, a new enrolment token (the old key is
        unbound), secrets once more, state waiting, alerts cleared. Return the new provisioning number."""
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
                    updated=now,
                    running_generation=None,
                    converge_error=None,
                    retired_at=None,
                    retired_as=None,
                    **_minted(now),
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
            if updated:
                return
            if conn.execute(sa.select(sa.func.count()).select_from(unknown_table)).scalar_one() >= UNKNOWN_LIMIT:
                # full: the machine seen longest ago goes, so a new one always shows (random MACs cannot pin it)
                oldest = sa.select(unknown_table.c.mac).order_by(unknown_table.c.last_seen).limit(1).scalar_subquery()
                conn.execute(unknown_table.delete().where(unknown_table.c.mac == oldest))
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
        """The rows of hosts that need an operator: failed, refused their secrets, misused credentials, or a
        generation they could not apply (every poll shows them all)."""
        with self.engine.connect() as conn:
            query = sa.select(hosts_table).where(
                sa.or_(
                    hosts_table.c.state == State.failed.value,
                    hosts_table.c.secrets_denied > 0,
                    hosts_table.c.credential_alert.is_not(None),
                    hosts_table.c.converge_error.is_not(None),
                )
            )
            return {r["name"]: dict(r) for r in conn.execute(query).mappings()}

    def census(self, *, now: float | None = None) -> dict[tuple[str, str], tuple[int, float | None]]:
        """(state, credential) -> (hosts, the oldest `updated` among them), in one grouped query: what /metrics
        reports at each scrape, whatever the number of hosts. The credential as /v1/hosts names it: enrolled (a key
        is bound), spent (no token left), expired, armed."""
        now = time.time() if now is None else now
        h = hosts_table.c
        credential = sa.case(
            (h.host_key.is_not(None), "enrolled"),
            (h.enrol_token.is_(None), "spent"),
            (sa.and_(h.enrol_expires.is_not(None), h.enrol_expires < now), "expired"),
            else_="armed",
        ).label("credential")
        query = sa.select(h.state, credential, sa.func.count(), sa.func.min(h.updated)).group_by(h.state, credential)
        with self.engine.connect() as conn:
            return {(state, cred): (int(n), oldest) for state, cred, n, oldest in conn.execute(query)}

    def host_states(self) -> dict[str, str]:
        """name -> state of every host the store knows (retired ones too): /metrics's per-host state, which lets an
        alert on a host's exporters wait while the host is still being installed."""
        with self.engine.connect() as conn:
            return {name: state for name, state in conn.execute(sa.select(hosts_table.c.name, hosts_table.c.state))}

    def ping(self) -> None:
        """Raise when the database does not answer a trivial query (GET /healthz)."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(1)).scalar_one()

    def unknown_machines(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            query = sa.select(unknown_table).order_by(unknown_table.c.last_seen.desc())
            return [dict(r) for r in conn.execute(query).mappings()]

    # --- the data tier, as the failover monitor and the backup runner report it ------------------------------

    def _insert(self) -> Any:
        return (postgresql if self._pg else sqlite).insert

    def _put_db_state(self, conn: Connection, key: str, at: float, value: dict[str, Any], now: float) -> None:
        """Upsert one db_state row unless the stored one happened later (a late resend never hides a newer look)."""
        t = db_state_table
        insert = self._insert()(t).values(key=key, at=at, value=json.dumps(value), received=now)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[t.c.key],
                set_={"at": insert.excluded.at, "value": insert.excluded.value, "received": insert.excluded.received},
                where=t.c.at <= insert.excluded.at,
            )
        )

    def put_db_view(self, view: dict[str, Any], *, now: float | None = None) -> None:
        """The monitor's latest look at the db hosts ({"observed", "hosts"}, kiln.server.dbreport.parse_view)."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            self._put_db_state(conn, "view", view["observed"], view, now)

    def add_db_events(self, events: list[DbEvent], *, now: float | None = None) -> int:
        """Keep the events (an id seen before is skipped: a resend after a lost answer); the last backup is kept
        apart, so it outlives the retention of DB_EVENTS_KEPT events. Return how many were new."""
        now = time.time() if now is None else now
        t = db_events_table
        added = 0
        with self._transaction() as conn:
            for e in events:
                insert = self._insert()(t).values(
                    event_id=e.id,
                    kind=e.kind,
                    host=e.host,
                    message=e.message,
                    at=e.at,
                    received=now,
                    backup=json.dumps(e.backup) if e.backup is not None else None,
                )
                # rowcount says nothing here on PostgreSQL (-1: the driver's insert returns the new id): count rows
                skipping = insert.on_conflict_do_nothing(index_elements=[t.c.event_id]).returning(t.c.id)
                added += len(conn.execute(skipping).all())
                if e.backup is not None:
                    self._put_db_state(conn, "backup", e.at, {**e.backup, "host": e.host, "at": e.at}, now)
            newest = conn.execute(sa.select(sa.func.max(t.c.id))).scalar()
            if newest is not None and added:
                conn.execute(t.delete().where(t.c.id <= newest - DB_EVENTS_KEPT))
        return added

    def last_backup_at(self) -> float | None:
        """When the newest backup the runner reported finished (its event's time, epoch seconds); None before any."""
        with self.engine.connect() as conn:
            at = conn.execute(sa.select(db_state_table.c.at).where(db_state_table.c.key == "backup")).scalar()
        return None if at is None else float(at)

    def db_report(self, *, now: float | None = None) -> dict[str, Any]:
        """What GET /v1/db answers: the view (or None), the last backup (or None), the newest events (newest
        first) and the alerts: the failover-kind events of the last DB_ALERT_SECONDS."""
        now = time.time() if now is None else now
        t = db_events_table
        with self.engine.connect() as conn:
            state = {r.key: r for r in conn.execute(sa.select(db_state_table))}
            recent = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(DB_EVENTS_SHOWN)).mappings().all()
            alerting = (
                conn.execute(
                    sa.select(t)
                    .where(t.c.kind.in_(ALERT_KINDS), t.c.at >= now - DB_ALERT_SECONDS)
                    .order_by(t.c.id.desc())
                    .limit(DB_EVENTS_SHOWN)
                )
                .mappings()
                .all()
            )

        def entry(r: Any) -> dict[str, Any]:
            found = {k: r[k] for k in ("kind", "host", "message", "at", "received")}
            return {**found, "backup": json.loads(r["backup"]) if r["backup"] else None}

        view = state.get("view")
        return {
            "view": {**json.loads(view.value), "received": view.received} if view else None,
            "last_backup": json.loads(state["backup"].value) if "backup" in state else None,
            "events": [entry(r) for r in recent],
            "alerts": [entry(r) for r in alerting],
        }

    # --- the alerts Alertmanager sends (POST /v1/alerts) ------------------------------------------------------

    def record_alerts(self, alerts: Iterable[Alert], *, now: float | None = None) -> int:
        """Keep each alert by its fingerprint; return how many changed what is stored. A notification about an
        older episode (an earlier startsAt) than the one stored is ignored, and so is a firing one about an episode
        already resolved (notifications may arrive out of order: retries, several groups). Past FIRING_KEPT firing
        and RESOLVED_KEPT resolved alerts, the ones told least recently go."""
        now = time.time() if now is None else now
        t = alerts_table
        changed = 0
        with self._transaction() as conn:
            for a in alerts:
                values = {
                    "status": a.status,
                    "starts_at": a.starts_at,
                    "ends_at": a.ends_at,
                    "labels": json.dumps(a.labels, sort_keys=True),
                    "annotations": json.dumps(a.annotations, sort_keys=True),
                    "generator_url": a.generator_url,
                    "updated": now,
                }
                # new: inserted; already there (or inserted just now by another server sharing PostgreSQL): compared
                # under its row lock
                insert = self._insert()(t).values(fingerprint=a.fingerprint, received=now, **values)
                if conn.execute(
                    insert.on_conflict_do_nothing(index_elements=[t.c.fingerprint]).returning(t.c.fingerprint)
                ).all():
                    changed += 1
                    continue
                query = sa.select(t.c.status, t.c.starts_at, t.c.received).where(t.c.fingerprint == a.fingerprint)
                stored = conn.execute(query.with_for_update() if self._pg else query).one()
                if a.starts_at < stored.starts_at or (
                    a.starts_at == stored.starts_at and stored.status == "resolved" and a.status == "firing"
                ):
                    continue
                same = a.starts_at == stored.starts_at  # the same episode: first told when it was
                conn.execute(
                    t.update()
                    .where(t.c.fingerprint == a.fingerprint)
                    .values(received=stored.received if same else now, **values)
                )
                changed += 1
            for status, kept in (("firing", FIRING_KEPT), ("resolved", RESOLVED_KEPT)):
                beyond = (
                    sa.select(t.c.fingerprint)
                    .where(t.c.status == status)
                    .order_by(t.c.updated.desc(), t.c.fingerprint)
                    .offset(kept)
                )
                conn.execute(t.delete().where(t.c.fingerprint.in_(beyond)))
        return changed

    def alert_list(self) -> dict[str, list[dict[str, Any]]]:
        """{"firing": [...], "resolved": [...]}: every firing alert, and the kept resolved ones, most recently
        resolved first; each row with its labels and annotations decoded."""
        t = alerts_table
        with self.engine.connect() as conn:
            firing = conn.execute(
                sa.select(t).where(t.c.status == "firing").order_by(t.c.starts_at, t.c.fingerprint)
            ).mappings()
            found = {"firing": [dict(r) for r in firing]}
            resolved = conn.execute(
                sa.select(t).where(t.c.status == "resolved").order_by(t.c.updated.desc(), t.c.fingerprint)
            ).mappings()
            found["resolved"] = [dict(r) for r in resolved]
        for rows in found.values():
            for row in rows:
                row["labels"] = json.loads(row["labels"])
                row["annotations"] = json.loads(row["annotations"])
        return found
