"""The state store on a real SQLite file: events move states, an enrolment token binds one key even under
concurrency, secrets go to that key until acknowledged, re-arming starts a new provisioning with a new token,
a second process sees the same state, unknown machines and the access log stay bounded."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
import sqlalchemy as sa

from kiln.server.dbreport import DbEvent
from kiln.server.inputs import Event
from kiln.server.store import (
    DB_ALERT_SECONDS,
    DB_EVENTS_KEPT,
    UNKNOWN_LIMIT,
    CredentialError,
    StateStore,
    UnknownHost,
    db_events_table,
    metadata,
)


@pytest.fixture()
def store(tmp_path: Path):
    s = StateStore.open("sqlite:///state/kiln.db", tmp_path)
    s.ensure_hosts(["web1", "db2"])
    yield s
    s.close()


def ev(step: str, status: str, **kw) -> Event:
    return Event(step, status, kw.get("detail", ""), kw.get("at"), kw.get("duration"))


def test_database_is_created_under_the_project(tmp_path: Path, store: StateStore) -> None:
    assert (tmp_path / "state" / "kiln.db").is_file()
    assert store.host_rows()["web1"]["state"] == "waiting"


def test_events_move_the_state_and_measure_durations(store: StateStore) -> None:
    store.record_event("web1", ev("install", "start"), now=100.0)
    assert store.record_event("web1", ev("install", "ok"), now=112.5).value == "booting"
    row = store.host_rows()["web1"]
    assert row["installed"] and row["last_duration"] == 12.5 and row["max_ok_index"] == 0
    assert [(e["step"], e["status"]) for e in row["timeline"]] == [("install", "start"), ("install", "ok")]
    store.record_event("web1", ev("fetch", "fail", detail="TLS: unknown CA", duration=3.0), now=200.0)
    row = store.host_rows()["web1"]
    assert row["state"] == "failed" and row["last_duration"] == 3.0 and row["last_detail"] == "TLS: unknown CA"


def test_unknown_host_is_refused(store: StateStore) -> None:
    with pytest.raises(UnknownHost):
        store.record_event("nosuch", ev("install", "ok"))
    with pytest.raises(UnknownHost):
        store.secrets_for("nosuch")
    with pytest.raises(UnknownHost):
        store.rearm("nosuch")


def test_a_token_binds_exactly_one_key_among_concurrent_enrolments(tmp_path: Path, store: StateStore) -> None:
    token = store.armed_token("db2")
    assert token and store.token_holder(token) == "db2"
    other = StateStore.open("sqlite:///state/kiln.db", tmp_path)  # a second engine, like a second process

    def enrol(i: int) -> str:
        try:
            return "bound" if (store if i % 2 else other).enrol(token, f"key{i}", "10.0.0.9").first else "again"
        except CredentialError as e:
            return str(e.status)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(enrol, range(16)))
    other.close()
    assert sorted(outcomes) == ["403"] * 15 + ["bound"]
    bound, _ = store.credential("db2") or (None, "")
    again = store.enrol(token, bound or "", "10.0.0.9")
    assert again.host == "db2" and again.secrets and not again.first, "the same key again: a lost response retried"


def test_secrets_until_acknowledged_then_counted_refusals(store: StateStore) -> None:
    token = store.armed_token("db2")
    assert token is not None
    store.enrol(token, "k", "10.0.0.9", now=10.0)
    assert store.secrets_for("db2") and store.secrets_for("db2"), "until the host says it has them"
    assert store.ack_secrets("db2") and not store.ack_secrets("db2")
    assert not store.secrets_for("db2")
    assert store.host_rows()["db2"]["secrets_denied"] == 1
    assert store.armed_token("db2") is None and store.token_holder(token) is None, "the token is spent"
    with pytest.raises(CredentialError) as refused:
        store.enrol(token, "k", "10.0.0.9")
    assert refused.value.status == 401


def test_an_expired_token_is_refused_with_the_fix(store: StateStore) -> None:
    token = store.armed_token("web1")
    assert token is not None
    with pytest.raises(CredentialError) as refused:
        store.enrol(token, "k", "10.0.0.9", now=10_000_000_000.0)
    assert refused.value.status == 401 and "./inv reprovision web1" in refused.value.reason
    assert store.armed_token("web1", now=10_000_000_000.0) is None


def test_unknown_machines_are_counted_and_bounded(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.note_unknown("52:54:00:00:00:01", now=1.0)
    store.note_unknown("52:54:00:00:00:01", now=2.0)
    assert store.unknown_machines() == [
        {"mac": "52:54:00:00:00:01", "first_seen": 1.0, "last_seen": 2.0, "requests": 2}
    ]
    monkeypatch.setattr("kiln.server.store.UNKNOWN_LIMIT", 2)
    store.note_unknown("52:54:00:00:00:02", now=3.0)
    for i in range(50):  # a flood of random MACs keeps the table at its cap ...
        store.note_unknown(f"02:00:00:00:00:{i:02x}", now=10.0 + i)
    store.note_unknown("52:54:00:00:00:03", now=100.0)  # ... and a new real machine still shows, newest first
    assert [u["mac"] for u in store.unknown_machines()] == ["52:54:00:00:00:03", "02:00:00:00:00:31"]
    store.forget_unknown(["52:54:00:00:00:03"])
    assert [u["mac"] for u in store.unknown_machines()] == ["02:00:00:00:00:31"] and UNKNOWN_LIMIT >= 1000


def test_concurrent_events_for_one_host_all_land(store: StateStore) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.record_event("web1", ev("files", "ok", detail=str(i))), range(100)))
    assert sorted(int(e["detail"]) for e in store.host_rows()["web1"]["timeline"]) == list(range(100))


def test_only_sqlite_and_postgresql_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        StateStore.open("mysql://x@localhost/kiln", tmp_path)
    with pytest.raises(ValueError, match="needs a file path"):
        StateStore.open("sqlite://", tmp_path)


def test_timelines_keep_the_newest_events_and_the_limit_is_in_the_query(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kiln.server.store.TIMELINE_LIMIT", 5)
    for i in range(12):
        store.record_event("web1", ev("files", "ok", detail=str(i)), now=float(i))
    store.record_event("db2", ev("install", "start"), now=50.0)
    rows = store.host_rows()
    assert [e["detail"] for e in rows["web1"]["timeline"]] == ["7", "8", "9", "10", "11"], "newest 5, oldest first"
    assert len(rows["db2"]["timeline"]) == 1
    statements: list[str] = []
    sa_event = pytest.importorskip("sqlalchemy").event
    sa_event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    store.host_rows()
    assert any("row_number() OVER" in s for s in statements), "the database numbers and cuts the timeline"


def test_since_returns_only_the_hosts_changed_since(store: StateStore) -> None:
    store.record_event("web1", ev("install", "start"), now=10_000_000_000.0)  # in the future: newer than ensure_hosts
    assert set(store.host_rows(since=9_999_999_999.0, timeline=False)) == {"web1"}
    assert store.host_rows(since=20_000_000_000.0) == {}
    store.note_access("127.0.0.1", "db2", "bundle", "granted", now=10_000_000_001.0)  # not a change of the host
    store.record_event("db2", ev("install", "start"), now=10_000_000_001.0)
    assert set(store.host_rows(since=10_000_000_000.5, timeline=False)) == {"db2"}


def test_a_database_from_an_older_kiln_gets_the_new_columns_and_indexes(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state" / "kiln.db"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:  # the hosts table as kiln made it before the `updated` column
        db.execute(
            "CREATE TABLE hosts (name VARCHAR(64) PRIMARY KEY, generation INTEGER NOT NULL DEFAULT 1, "
            "state VARCHAR(16) NOT NULL DEFAULT 'waiting', installed BOOLEAN NOT NULL DEFAULT 0, "
            "max_ok_index INTEGER NOT NULL DEFAULT -1, last_step VARCHAR(16), last_status VARCHAR(8), "
            "last_detail TEXT, last_received FLOAT, last_duration FLOAT, step_started FLOAT, armed_at FLOAT, "
            "secrets_served_at FLOAT, secrets_denied INTEGER NOT NULL DEFAULT 0, secrets_denied_at FLOAT)"
        )
        db.execute("INSERT INTO hosts (name) VALUES ('web1')")
    store = StateStore.open("sqlite:///state/kiln.db", tmp_path)
    try:
        store.record_event("web1", ev("install", "start"), now=123.0)
        assert store.host_rows()["web1"]["updated"] == 123.0
        # and the indexes added since: a token finds its host through one, not by reading every row
        with sqlite3.connect(path) as db:
            plan = " ".join(
                row[-1] for row in db.execute("EXPLAIN QUERY PLAN SELECT name FROM hosts WHERE enrol_token = 'x'")
            )
        assert "USING INDEX hosts_enrol_token" in plan, plan
    finally:
        store.close()


def db_event(i: int, kind: str = "rejoin", **backup: object) -> DbEvent:
    return DbEvent(f"event-{i:08d}", kind, "db2", f"event {i}", 1000.0 + i, dict(backup) or None)


def test_db_events_are_bounded_and_the_last_backup_outlives_them(store: StateStore) -> None:
    store.add_db_events([db_event(0, "backup", id="b0", gtid="0-1-5", stored_bytes=10)], now=2000.0)
    for start in range(1, DB_EVENTS_KEPT + 101, 100):  # events 1 .. DB_EVENTS_KEPT + 100
        store.add_db_events([db_event(i) for i in range(start, start + 100)], now=2000.0)
    with store.engine.connect() as conn:
        kept = conn.execute(sa.select(sa.func.count()).select_from(db_events_table)).scalar_one()
    assert kept == DB_EVENTS_KEPT
    report = store.db_report(now=2000.0)
    assert report["last_backup"] == {"id": "b0", "gtid": "0-1-5", "stored_bytes": 10, "host": "db2", "at": 1000.0}
    assert report["events"][0]["message"] == f"event {DB_EVENTS_KEPT + 100}"  # newest first
    assert report["alerts"] == [], "rejoins and backups are no alerts"


def test_only_recent_failover_kind_events_are_alerts(store: StateStore) -> None:
    store.add_db_events([db_event(1, "failover"), db_event(2, "fence"), db_event(3, "waiting")], now=2000.0)
    assert [a["kind"] for a in store.db_report(now=2000.0)["alerts"]] == ["fence", "failover"]
    assert store.db_report(now=1000.0 + DB_ALERT_SECONDS + 10)["alerts"] == [], "a day later they are history"


def test_an_older_view_never_replaces_a_newer_one(store: StateStore) -> None:
    store.put_db_view({"observed": 200.0, "hosts": [{"name": "db1"}]})
    store.put_db_view({"observed": 100.0, "hosts": []})
    assert store.db_report()["view"]["hosts"] == [{"name": "db1"}]
    store.put_db_view({"observed": 300.0, "hosts": []})
    assert store.db_report()["view"]["hosts"] == []


def test_a_database_from_before_the_data_tier_is_opened_and_given_its_tables(tmp_path: Path) -> None:
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        if table.name not in ("db_state", "db_events"):
            table.to_metadata(old)
    path = tmp_path / "old.db"
    old.create_all(sa.create_engine(f"sqlite:///{path}"))
    tool = StateStore.open(f"sqlite:///{path}", tmp_path, create=False)  # ./inv reprovision beside an older server
    tool.close()
    server = StateStore.open(f"sqlite:///{path}", tmp_path)
    server.add_db_events([db_event(1, "failover")], now=1001.0)
    assert server.db_report(now=1001.0)["alerts"][0]["message"] == "event 1"
    server.close()
