"""What Alertmanager's webhook sends the provisioning server (POST /v1/alerts), checked at the edge: its version 4
JSON, bounded in every string, map and list. Alertmanager's own names are kept (status, labels, annotations,
startsAt, endsAt, fingerprint).

    {"version": "4", "status": "firing|resolved", "receiver": ..., "groupKey": ..., "truncatedAlerts": N,
     "groupLabels": {...}, "commonLabels": {...}, "commonAnnotations": {...}, "externalURL": ...,
     "alerts": [{"status": "firing|resolved", "labels": {...}, "annotations": {...}, "startsAt": RFC3339,
                 "endsAt": RFC3339, "generatorURL": ..., "fingerprint": 16 hex digits}, ...]}

Fields Alertmanager may add within version 4 are let through (it added truncatedAlerts so); a field named here
must have its shape.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from kiln.monitoring.config import MAX_ALERTS, REPEAT_HOURS
from kiln.server.inputs import BadInput, checked_json

# MAX_ALERTS alerts of about 16 KiB each (labels and annotations well past what kiln's rules make) fit
MAX_BODY_BYTES = 2 * 1024 * 1024
STATUSES = ("firing", "resolved")
SEVERITIES = ("critical", "warning", "info")  # the order the dashboard lists them in; kiln's rules use the first two
# Alertmanager tells a firing alert again every repeat_interval (REPEAT_HOURS): one not told for two of those was
# likely resolved while this server did not hear it, or Alertmanager is gone
STALE_SECONDS = 2 * REPEAT_HOURS * 3600 + 600

_TEXT = {"type": "string", "maxLength": 4096}
_TIME = {"type": "string", "maxLength": 64}


def _map(value_chars: int) -> dict[str, Any]:
    return {
        "type": "object",
        "maxProperties": 64,
        "propertyNames": {"maxLength": 128},
        "additionalProperties": {"type": "string", "maxLength": value_chars},
    }


_MAP = _map(4096)  # labels: Prometheus' are short
# an annotation is text a rule's template makes (a description may quote a query's output): a notification refused
# for one would never be shown, so the bound is generous
_ANNOTATIONS = _map(16384)

NOTIFICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "status", "alerts"],
    "properties": {
        "version": {"const": "4"},
        "status": {"enum": list(STATUSES)},
        "receiver": _TEXT,
        "groupKey": _TEXT,
        "truncatedAlerts": {"type": "integer", "minimum": 0},
        "groupLabels": _MAP,
        "commonLabels": _MAP,
        "commonAnnotations": _ANNOTATIONS,
        "externalURL": _TEXT,
        "alerts": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_ALERTS,
            "items": {
                "type": "object",
                "required": ["status", "labels", "annotations", "startsAt", "endsAt", "fingerprint"],
                "properties": {
                    "status": {"enum": list(STATUSES)},
                    "labels": {**_MAP, "required": ["alertname"]},
                    "annotations": _ANNOTATIONS,
                    "startsAt": _TIME,
                    "endsAt": _TIME,
                    "generatorURL": _TEXT,
                    "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{16}$(?!\\n)"},
                },
            },
        },
    },
}
_NOTIFICATION = jsonschema.Draft202012Validator(NOTIFICATION_SCHEMA)


@dataclass(frozen=True)
class Alert:
    """One alert as Alertmanager told it; times in seconds since the epoch (ends_at None: not ended, or unset)."""

    fingerprint: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None
    generator_url: str = ""


@dataclass(frozen=True)
class Notification:
    receiver: str
    status: str
    alerts: tuple[Alert, ...]
    truncated: int  # alerts of the group left out past max_alerts (they come again in a later notification)


# Go's RFC 3339 with up to nine fractional digits; Python reads at most six
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def epoch(text: str, where: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time; None for Go's zero time (year 1: Alertmanager's "unset");
    BadInput naming `where` for anything else."""
    match = _RFC3339.match(text)
    if match is None:
        raise BadInput(f"{where}: {text[:64]!r} is not an RFC 3339 time")
    day, fraction, zone = match.groups()
    try:
        when = dt.datetime.fromisoformat(day + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        raise BadInput(f"{where}: {text[:64]!r} is not an RFC 3339 time") from None
    if when.year <= 1:
        return None
    return when.timestamp() + (int(fraction.ljust(9, "0")) / 1e9 if fraction else 0.0)


def parse_notification(body: bytes) -> Notification:
    """A webhook body, or BadInput naming the first problem (JSON syntax, shape, a time that is not RFC 3339)."""
    data = checked_json(body, _NOTIFICATION)
    alerts = []
    for i, a in enumerate(data["alerts"]):
        starts = epoch(a["startsAt"], f"$.alerts[{i}].startsAt")
        if starts is None:
            raise BadInput(f"$.alerts[{i}].startsAt: an alert has a start")
        alerts.append(
            Alert(
                a["fingerprint"],
                a["status"],
                a["labels"],
                a["annotations"],
                starts,
                epoch(a["endsAt"], f"$.alerts[{i}].endsAt"),
                a.get("generatorURL", ""),
            )
        )
    return Notification(data.get("receiver", ""), data["status"], tuple(alerts), data.get("truncatedAlerts", 0))


def severity_rank(severity: str) -> int:
    """Where an alert of this severity is listed: critical first, an unknown severity last."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def shown(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A stored alert (StateStore.alert_list's row) as GET /v1/alerts gives it: what an operator reads first
    (alertname, severity, host or instance, summary, runbook, since when), whether it is stale (a firing alert not
    told again for STALE_SECONDS), then all its labels and annotations."""
    labels, annotations = row["labels"], row["annotations"]
    return {
        "fingerprint": row["fingerprint"],
        "status": row["status"],
        "alertname": labels.get("alertname", ""),
        "severity": labels.get("severity", ""),
        "host": labels.get("host", ""),  # kiln's scrape configs label every target with its host
        "instance": labels.get("instance", ""),
        "summary": annotations.get("summary", ""),
        "runbook": annotations.get("runbook", ""),
        "starts_at": row["starts_at"],
        "ends_at": row["ends_at"],
        "received": row["received"],  # when the server was first told of it
        "updated": row["updated"],  # when Alertmanager last told of it
        "stale": row["status"] == "firing" and now - row["updated"] > STALE_SECONDS,
        "labels": labels,
        "annotations": annotations,
        "generator_url": row["generator_url"],
    }


def listing(found: dict[str, list[dict[str, Any]]], now: float) -> dict[str, list[dict[str, Any]]]:
    """GET /v1/alerts' lists: the firing alerts, critical first, then the longest firing first (then by name); the
    resolved ones as stored (most recently resolved first). `now`: the server's clock, seconds since the epoch."""
    firing = sorted(
        (shown(r, now) for r in found["firing"]),
        key=lambda a: (severity_rank(a["severity"]), a["starts_at"], a["alertname"], a["fingerprint"]),
    )
    return {"firing": firing, "resolved": [shown(r, now) for r in found["resolved"]]}
