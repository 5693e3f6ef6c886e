"""What Alertmanager's webhook sends (version 4), for the tests of the server's receiver: the fields and formats
of a real notification from Alertmanager 0.25."""

from __future__ import annotations

from typing import Any


def alert(name: str = "InstanceDown", host: str = "web1", **kw: Any) -> dict[str, Any]:
    """One alert as Alertmanager 0.25's webhook sends it (fields and formats taken from a real notification)."""
    return {
        "status": kw.get("status", "firing"),
        "labels": {"alertname": name, "host": host, "instance": "10.10.0.21:9100", "severity": "critical"}
        | kw.get("labels", {}),
        "annotations": {"summary": f"{host} is down", "runbook": "docs/monitoring.md#instancedown"},
        "startsAt": kw.get("startsAt", "2026-12-01T18:00:00.123456789Z"),
        "endsAt": kw.get("endsAt", "0001-01-01T00:00:00Z"),
        "generatorURL": "http://mon1:9090/graph?g0.expr=up+%3D%3D+0",
        "fingerprint": kw.get("fingerprint", "0123456789abcdef"),
    }


def notification(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "receiver": "kiln-webhook",
        "status": status,
        "alerts": list(alerts),
        "groupLabels": {"alertname": "InstanceDown"},
        "commonLabels": {"alertname": "InstanceDown"},
        "commonAnnotations": {},
        "externalURL": "http://mon1:9093",
        "version": "4",
        "groupKey": '{}:{alertname="InstanceDown"}',
        "truncatedAlerts": 0,
    }
