"""Alerts reach people: a real Alertmanager, configured by kiln.monitoring.config for roles.yaml's receivers
(`provisioning`), notifies a real `./inv serve`; the operator sees the firing alerts with GET /v1/alerts, and a
resolved one leaves the list. A wrong token is refused (401) and logged; the right one, written into the same file,
is used from the next notification on."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from kiln.model import load_roles
from kiln.monitoring.config import Timing, alertmanager_config
from tests.integration.alertmanager import BINARY, RunningAlertmanager, running_alertmanager
from tests.integration.kiln_server import RunningServer, running_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which(BINARY) is None or shutil.which("amtool") is None,
        reason="needs Alertmanager and amtool (Debian's prometheus-alertmanager package)",
    ),
]

FAST = Timing(group_wait="1s", group_interval="1s", repeat_interval="1h")  # the drills' timers, shortened
T = TypeVar("T")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.fixture()
def alertmanager(server: RunningServer, tmp_path: Path) -> Iterator[RunningAlertmanager]:
    """Alertmanager rendered for the server's roles.yaml (alerts_to: the default, provisioning), on the port the
    server really listens on, holding a wrong token until the test writes the right one."""
    cluster = dataclasses.replace(load_roles(server.roles), provisioning_url=server.tls_url)
    assert cluster.monitoring.alerts_to == ("provisioning",)
    with running_alertmanager(
        tmp_path / "am", alertmanager_config(cluster, FAST), ca=server.secrets.ca_pem, token="not-the-token"
    ) as am:
        yield am


def until(what: str, probe: Callable[[], T | None], am: RunningAlertmanager, timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}\nAlertmanager said:\n{am.output()[-3000:]}"
        time.sleep(0.2)


def listed(server: RunningServer) -> dict[str, Any]:
    with server.client() as c:
        answer = c.get(f"{server.tls_url}/v1/alerts")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def firing(server: RunningServer) -> dict[str, dict[str, Any]]:
    return {a["alertname"]: a for a in listed(server)["firing"]}


def refused(server: RunningServer) -> list[dict[str, Any]]:
    with server.client() as c:
        rows = c.get(f"{server.tls_url}/v1/access", params={"outcome": "refused"}).json()["access"]
    return [r for r in rows if r["action"] == "alerts"]


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def test_alertmanager_notifies_the_server_firing_then_resolved(
    server: RunningServer, alertmanager: RunningAlertmanager
) -> None:
    started = time.monotonic()
    am = alertmanager
    web1 = ["host=web1", "instance=10.10.0.21:9100", "job=node", "severity=critical"]
    said = ["--annotation=summary=web1 does not answer", "--annotation=runbook=docs/monitoring.md#instancedown"]
    am.amtool("alert", "add", "InstanceDown", *web1, *said)

    # the wrong token: Alertmanager is refused, the refusal is logged with its peer, nothing is stored
    seen = until("the server refuses Alertmanager's wrong token", lambda: refused(server), am)
    assert seen[0]["peer"] == "127.0.0.1" and "alertmanager.token" in seen[0]["detail"]
    assert "refused alerts from 127.0.0.1" in server.output()
    assert listed(server)["firing"] == []

    # the right token in the same file: the next try delivers (no restart)
    am.set_token(server.secrets.alertmanager_token())
    down = until("InstanceDown firing on the server", lambda: firing(server).get("InstanceDown"), am)
    assert (down["severity"], down["host"], down["instance"]) == ("critical", "web1", "10.10.0.21:9100")
    assert down["summary"] == "web1 does not answer" and down["runbook"] == "docs/monitoring.md#instancedown"
    assert abs(down["starts_at"] - time.time()) < 60 and len(down["fingerprint"]) == 16

    # a second alert, through Alertmanager's API as Prometheus posts it
    disk = {
        "labels": {"alertname": "DiskAlmostFull", "host": "db1", "mountpoint": "/", "severity": "warning"},
        "annotations": {"summary": "db1: / is 91% full", "runbook": "docs/monitoring.md#diskalmostfull"},
        "startsAt": rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)),
    }
    posted = httpx.post(f"{am.url}/api/v2/alerts", json=[disk], timeout=10)
    assert posted.status_code == 200, posted.text
    both = until("both alerts firing", lambda: len(firing(server)) == 2 and listed(server)["firing"], am)
    assert [a["alertname"] for a in both] == ["InstanceDown", "DiskAlmostFull"], "critical first"
    assert both[1]["starts_at"] == pytest.approx(time.time() - 300, abs=30)

    # InstanceDown resolved (its end in the past): it leaves the firing list, DiskAlmostFull stays
    ended = rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    am.amtool("alert", "add", "InstanceDown", *web1, *said, f"--end={ended}")
    until("InstanceDown resolved", lambda: "InstanceDown" not in firing(server), am)
    now = listed(server)
    assert [a["alertname"] for a in now["firing"]] == ["DiskAlmostFull"]
    gone = next(a for a in now["resolved"] if a["alertname"] == "InstanceDown")
    assert gone["fingerprint"] == down["fingerprint"] and gone["ends_at"] == pytest.approx(time.time(), abs=30)
    assert "alertmanager told InstanceDown on web1 resolved" in server.output()
    print(f"firing and resolved through Alertmanager in {time.monotonic() - started:.1f} s")


def test_the_rendered_config_is_what_alertmanager_runs(
    server: RunningServer, alertmanager: RunningAlertmanager
) -> None:
    """Alertmanager's own view of its config (GET /api/v2/status) has the receiver kiln rendered, with its token
    hidden: the file is what runs, not a copy."""
    status = httpx.get(f"{alertmanager.url}/api/v2/status", timeout=10).json()
    original = status["config"]["original"]
    assert f"url: {server.tls_url}/v1/alerts" in original and "credentials_file: " in original, original
    assert "send_resolved: true" in original and "group_wait: 1s" in original
    assert json.dumps(original).count("not-the-token") == 0, "the token is in its file, not the config"


def test_the_lab_drills_read_alerts_as_alertmanager_and_the_server_hold_them(
    server: RunningServer, alertmanager: RunningAlertmanager
) -> None:
    """What the lab's alert drills read (kiln/lab/alerts.py), against the real daemons: Alertmanager's API v2 lists
    an alert by name and labels while it fires and leaves it out once resolved (the drills' "resolved"), and the
    server's listing has it firing, then resolved."""
    from kiln.lab import alerts

    am = alertmanager
    am.set_token(server.secrets.alertmanager_token())
    node = ["host=lb1", "instance=10.10.0.11:9100", "job=node", "severity=critical"]
    am.amtool("alert", "add", "InstanceDown", *node)
    am.amtool("alert", "add", "InstanceDown", "host=lb2", "instance=10.10.0.12:9100", "job=node")
    held = until("InstanceDown held", lambda: alerts.held(am.url, "InstanceDown"), am)
    assert {a["labels"]["host"] for a in held} >= {"lb1"}
    assert alerts.held(am.url, "WebNodeDown") == []
    until("told firing", lambda: alerts.listed(listed(server), "InstanceDown", "firing", host="lb1"), am)
    assert not alerts.listed(listed(server), "InstanceDown", "firing", host="web9")
    assert not alerts.listed(listed(server), "InstanceDown", "resolved", host="lb1")

    ended = rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    am.amtool("alert", "add", "InstanceDown", *node, f"--end={ended}")
    until(
        "lb1's InstanceDown let go",
        lambda: all(a["labels"]["host"] != "lb1" for a in alerts.held(am.url, "InstanceDown")),
        am,
    )
    assert [a["labels"]["host"] for a in alerts.held(am.url, "InstanceDown")] == ["lb2"], "the other one still fires"
    until("told resolved", lambda: alerts.listed(listed(server), "InstanceDown", "resolved", host="lb1"), am)
