"""The provisioning server as Alertmanager's webhook receiver, in process: the version 4 payload parsed and checked,
alerts kept by fingerprint (resolved ones leave the firing list, out-of-order notifications do not undo newer ones,
retention bounded), and POST /v1/alerts refused without Alertmanager's token, with the operator's, as text/plain,
too big or malformed, each refusal logged; GET /v1/alerts is the operator's."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from kiln import signing
from kiln.model import Cluster
from kiln.monitoring.config import MAX_ALERTS
from kiln.secrets import SecretStore
from kiln.server import ipxe
from kiln.server import store as store_module
from kiln.server.alerts import MAX_BODY_BYTES, STALE_SECONDS, Alert, epoch, listing, parse_notification
from kiln.server.app import Provisioner, tls_app
from kiln.server.auth import Authority
from kiln.server.bundles import BundleCache
from kiln.server.inputs import BadInput
from kiln.server.limits import Limits, RateLimit
from kiln.server.publish import Live
from kiln.server.store import StateStore
from tests.webhook import alert, notification

OPERATOR = "operator-token-for-tests"
ALERTMANAGER = "alertmanager-token-for-tests"


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


# --- the payload ---------------------------------------------------------------------------------------------


def test_a_notification_parses_into_alerts_with_epoch_times() -> None:
    told = parse_notification(body(notification(alert(), alert("DiskAlmostFull", fingerprint="fedcba9876543210"))))
    assert told.receiver == "kiln-webhook" and told.status == "firing" and told.truncated == 0
    first = told.alerts[0]
    assert first.fingerprint == "0123456789abcdef" and first.labels["host"] == "web1"
    assert first.starts_at == pytest.approx(1796148000.123456789)  # 2026-12-01T18:00:00.123456789Z
    assert first.ends_at is None, "Go's zero time is Alertmanager's unset"
    assert first.annotations["summary"] == "web1 is down"
    assert told.alerts[1].labels["alertname"] == "DiskAlmostFull"


def test_fields_alertmanager_may_add_are_let_through() -> None:
    data = notification(alert())
    data["somethingNew"] = {"x": 1}
    data["alerts"][0]["alsoNew"] = True
    assert len(parse_notification(body(data)).alerts) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T18:00:00Z", 1796148000.0),
        ("2026-12-01T19:00:00.5+01:00", 1796148000.5),
        ("2026-12-01T18:00:00.000000001Z", 1796148000.000000001),
        ("0001-01-01T00:00:00Z", None),
    ],
)
def test_rfc3339_times(text: str, expected: float | None) -> None:
    assert epoch(text, "$.t") == (pytest.approx(expected) if expected is not None else None)


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


MALFORMED = {
    "not JSON": (b"{alerts: [", "not valid JSON"),
    "not an object": (body([alert()]), "$: "),
    "another version": (body({**notification(alert()), "version": "3"}), "$.version"),
    "no alerts key": (body(_without(notification(alert()), "alerts")), "'alerts' is a required property"),
    "no alert at all": (body(notification()), "$.alerts"),
    "a status of its own": (body(notification(alert(status="pending"))), "$.alerts[0].status"),
    "an alert without a name": (
        body(notification({**alert(), "labels": {"host": "web1"}})),
        "'alertname' is a required property",
    ),
    "a fingerprint that is not one": (body(notification(alert(fingerprint="../../etc"))), "$.alerts[0].fingerprint"),
    "a label value that is not text": (
        body(notification({**alert(), "labels": {"alertname": "X", "n": 1}})),
        "$.alerts[0].labels.n",
    ),
    "a huge annotation": (
        body(notification({**alert(), "annotations": {"summary": "x" * 16385}})),
        "$.alerts[0].annotations.summary",
    ),
    "a time that is no time": (body(notification(alert(startsAt="yesterday"))), "$.alerts[0].startsAt"),
    "an alert without a start": (body(notification(alert(startsAt="0001-01-01T00:00:00Z"))), "has a start"),
    "too many alerts": (
        body(notification(*[alert(fingerprint=f"{i:016x}") for i in range(MAX_ALERTS + 1)])),
        "$.alerts",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_notifications_are_refused_saying_where(case: str) -> None:
    data, where = MALFORMED[case]
    with pytest.raises(BadInput, match=None) as refused:
        parse_notification(data)
    assert where in str(refused.value), str(refused.value)


def test_max_alerts_of_realistic_size_fit_the_body_limit() -> None:
    """Alertmanager cuts a notification at MAX_ALERTS (max_alerts): that many alerts must fit MAX_BODY_BYTES."""
    big = alert(labels={f"label{i}": "v" * 60 for i in range(20)})
    big["annotations"] = {"summary": "s" * 500, "runbook": "r" * 500, "description": "d" * 12000}
    many = body(notification(*[{**big, "fingerprint": f"{i:016x}"} for i in range(MAX_ALERTS)]))
    assert len(many) < MAX_BODY_BYTES
    assert len(parse_notification(many).alerts) == MAX_ALERTS


# --- the store -----------------------------------------------------------------------------------------------


@pytest.fixture()
def state(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore.open("sqlite:///state/kiln.db", tmp_path)
    yield s
    s.close()


def stored(fingerprint: str, status: str, starts_at: float, **labels: str) -> Alert:
    return Alert(fingerprint, status, {"alertname": "InstanceDown", **labels}, {}, starts_at, None)


def firing(state: StateStore) -> list[str]:
    return [r["fingerprint"] for r in state.alert_list()["firing"]]


def resolved(state: StateStore) -> list[str]:
    return [r["fingerprint"] for r in state.alert_list()["resolved"]]


def test_a_resolved_alert_leaves_the_firing_list(state: StateStore) -> None:
    assert state.record_alerts([stored("a" * 16, "firing", 100.0), stored("b" * 16, "firing", 110.0)], now=200) == 2
    assert firing(state) == ["a" * 16, "b" * 16]
    assert state.record_alerts([stored("a" * 16, "resolved", 100.0)], now=300) == 1
    assert firing(state) == ["b" * 16] and resolved(state) == ["a" * 16]
    row = state.alert_list()["resolved"][0]
    assert (row["received"], row["updated"]) == (200, 300), "first told at 200, resolved at 300"


def test_late_notifications_do_not_undo_newer_ones(state: StateStore) -> None:
    state.record_alerts([stored("a" * 16, "resolved", 100.0)], now=300)
    assert state.record_alerts([stored("a" * 16, "firing", 100.0)], now=301) == 0, "the same episode, resolved"
    assert state.record_alerts([stored("a" * 16, "firing", 50.0)], now=302) == 0, "an older episode"
    assert firing(state) == []
    assert state.record_alerts([stored("a" * 16, "firing", 400.0)], now=500) == 1, "it fires again: a new episode"
    assert firing(state) == ["a" * 16]
    assert state.alert_list()["firing"][0]["received"] == 500


def test_a_firing_alert_not_told_again_for_two_repeat_intervals_is_stale(state: StateStore) -> None:
    state.record_alerts([stored("a" * 16, "firing", 100.0)], now=1000.0)
    state.record_alerts([stored("b" * 16, "firing", 100.0), stored("c" * 16, "resolved", 90.0)], now=2000.0)
    later = 2000.0 + STALE_SECONDS - 500
    shown = listing(state.alert_list(), later)
    assert [(a["fingerprint"][0], a["stale"]) for a in shown["firing"]] == [("a", True), ("b", False)]
    assert [a["stale"] for a in shown["resolved"]] == [False], "a resolved alert is not waiting to be told"


def test_retention_keeps_the_most_recently_told(state: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FIRING_KEPT", 3)
    monkeypatch.setattr(store_module, "RESOLVED_KEPT", 2)
    for i in range(6):
        state.record_alerts([stored(f"{i:016x}", "firing", float(i))], now=100.0 + i)
    assert firing(state) == [f"{i:016x}" for i in (3, 4, 5)]
    for i in (3, 4, 5):
        state.record_alerts([stored(f"{i:016x}", "resolved", float(i))], now=200.0 + i)
    assert firing(state) == [] and resolved(state) == [f"{i:016x}" for i in (5, 4)]


# --- the routes ----------------------------------------------------------------------------------------------


@pytest.fixture()
def client(
    tmp_path: Path, cluster: Cluster, secret_store: SecretStore, state: StateStore
) -> Iterator[tuple[TestClient, Provisioner]]:
    live = Live(cluster, BundleCache(cluster, secret_store, signing.generate_private_key()))
    p = Provisioner(
        live=live,
        store=state,
        images=ipxe.ImageCatalog(tmp_path / "images"),
        installer=ipxe.Installer("http://127.0.0.1:8080", cluster.provisioning_url),
        authority=Authority(state, OPERATOR, ALERTMANAGER),
    )
    with TestClient(tls_app(p), base_url="https://kiln.test") as c:
        yield c, p


def post(c: TestClient, content: bytes, token: str | None = ALERTMANAGER, kind: str = "application/json") -> Any:
    headers = {"Content-Type": kind}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return c.post("/v1/alerts", content=content, headers=headers)


def listed(c: TestClient) -> dict[str, Any]:
    answer = c.get("/v1/alerts", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_alertmanagers_notification_is_stored_and_listed_for_the_operator(client: Any) -> None:
    c, _ = client
    warning = alert("DiskAlmostFull", "db1", fingerprint="1" * 16, labels={"severity": "warning"})
    answer = post(c, body(notification(warning, alert())))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"alerts": 2, "changed": 2}
    shown = listed(c)["firing"]
    assert [(a["alertname"], a["severity"], a["host"]) for a in shown] == [
        ("InstanceDown", "critical", "web1"),  # critical first
        ("DiskAlmostFull", "warning", "db1"),
    ]
    assert shown[0]["summary"] == "web1 is down" and shown[0]["runbook"] == "docs/monitoring.md#instancedown"
    assert shown[0]["instance"] == "10.10.0.21:9100" and shown[0]["starts_at"] == pytest.approx(1796148000.123)
    gone = copy.deepcopy(alert())
    gone.update(status="resolved", endsAt="2026-12-01T18:05:00Z")
    assert post(c, body(notification(gone, status="resolved"))).status_code == 200
    after = listed(c)
    assert [a["alertname"] for a in after["firing"]] == ["DiskAlmostFull"]
    assert [(a["alertname"], a["ends_at"]) for a in after["resolved"]] == [("InstanceDown", 1796148300.0)]


def refusals(p: Provisioner) -> list[dict[str, Any]]:
    return [r for r in p.store.access_log(outcome="refused") if r["action"] == "alerts"]


@pytest.mark.parametrize(
    ("token", "why"),
    [(None, "no token"), ("wrong-" + ALERTMANAGER, "a wrong token"), (OPERATOR, "the operator's token")],
)
def test_a_notification_without_alertmanagers_token_is_refused_and_logged(
    client: Any, caplog: pytest.LogCaptureFixture, token: str | None, why: str
) -> None:
    c, p = client
    with caplog.at_level(logging.WARNING, logger="kiln.server"):
        answer = post(c, body(notification(alert())), token=token)
    assert answer.status_code == 401, why
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="kiln"'
    assert "alertmanager.token" in answer.json()["error"]
    assert any("refused alerts from testclient" in r.getMessage() for r in caplog.records), caplog.text
    assert [r["peer"] for r in refusals(p)] == ["testclient"]
    assert listed(c)["firing"] == [], "nothing stored"


def test_no_token_is_no_token_even_when_the_server_has_none(client: Any) -> None:
    c, p = client
    p.authority.alertmanager_token = ""
    assert post(c, body(notification(alert())), token="").status_code == 401


@pytest.mark.parametrize(
    ("content", "kind", "status"),
    [
        (body(notification(alert())), "text/plain", 415),
        (b"x" * (MAX_BODY_BYTES + 1), "application/json", 413),
        (b'{"version": "4", "status": "firing", "alerts": [{"status": "firing"}]}', "application/json", 400),
        (b"\xff\xfe not json", "application/json", 400),
    ],
    ids=["text/plain", "too big", "malformed", "not even text"],
)
def test_what_is_not_a_notification_is_refused(client: Any, content: bytes, kind: str, status: int) -> None:
    c, _ = client
    answer = post(c, content, kind=kind)
    assert answer.status_code == status, answer.text
    assert "error" in answer.json()
    assert listed(c)["firing"] == []


def test_the_list_is_the_operators(client: Any) -> None:
    c, p = client
    assert c.get("/v1/alerts").status_code == 401
    assert c.get("/v1/alerts", headers={"Authorization": f"Bearer {ALERTMANAGER}"}).status_code == 401
    dashboard = {"Cookie": f"kiln_operator={OPERATOR}"}  # the dashboard's cookie
    assert c.get("/v1/alerts", headers=dashboard).status_code == 200
    assert len(refusals(p)) == 2


def test_alertmanager_has_a_rate_of_its_own(client: Any) -> None:
    c, p = client
    p.limits = Limits(per_host=RateLimit(rate=0.01, burst=2))
    answers = [post(c, body(notification(alert()))).status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    assert post(c, body(notification(alert())), token=None).status_code == 401, "the token is checked first"
