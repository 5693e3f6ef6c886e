"""What the failover monitor and the backup runner report about the data tier (PUT /v1/db, POST /v1/db/events),
checked at the edge: the shapes are fixed, every string and list is bounded, an event's kind is one of KINDS.

    PUT  /v1/db          {"observed": EPOCH, "hosts": [Seen.summary(), ...]}       the monitor's latest look
    POST /v1/db/events   {"events": [{"id", "kind", "host", "message", "at", "backup"?}, ...]}

The dashboard raises an alert for the events of ALERT_KINDS (what an operator must know happened or must act on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema

from kiln.db.replication import ROLES
from kiln.server.inputs import BadInput, checked_json

MAX_BODY_BYTES = 256 * 1024
MAX_HOSTS = 64
MAX_EVENTS = 100  # per request
# the monitor's kinds (kiln.db.failover.Event, "error" from kiln.db.topology) and the backup runner's
KINDS = (
    *("primary", "failover", "switchover", "rejoin", "fence", "errant", "writable", "waiting", "refused", "error"),
    "backup",
)
ALERT_KINDS = ("failover", "fence", "errant", "refused", "switchover")

_NAME = {"type": "string", "minLength": 1, "maxLength": 64}
_TEXT = {"type": "string", "maxLength": 2000}
_EPOCH = {"type": "number", "minimum": 0, "maximum": 2**40}
_COUNT = {"type": "integer", "minimum": 0, "maximum": 2**62}

VIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["observed", "hosts"],
    "properties": {
        "observed": _EPOCH,
        "hosts": {
            "type": "array",
            "maxItems": MAX_HOSTS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "address", "answered", "role"],
                "properties": {
                    "name": _NAME,
                    "address": {"type": "string", "maxLength": 64},
                    "answered": {"type": "boolean"},
                    "error": _TEXT,
                    "role": {"enum": list(ROLES)},
                    "gtid": _TEXT,
                    "follows": {"type": "string", "maxLength": 64},
                    "io": {"type": "string", "maxLength": 16},
                    "sql": {"type": "string", "maxLength": 16},
                    "lag": {"anyOf": [{"type": "null"}, _COUNT]},
                    "semi_sync": {"type": "boolean"},
                },
            },
        },
    },
}

BACKUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "gtid"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 128},
        "gtid": _TEXT,
        "started": {"type": "string", "maxLength": 64},
        "raw_bytes": _COUNT,
        "stored_bytes": _COUNT,
        "seconds": {"type": "number", "minimum": 0, "maximum": 86400 * 7},
    },
}

EVENTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["events"],
    "properties": {
        "events": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_EVENTS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "kind", "host", "message", "at"],
                "properties": {
                    # the sender's own: an event sent again (its answer was lost) is stored once
                    "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"},
                    "kind": {"enum": list(KINDS)},
                    "host": _NAME,
                    "message": {"type": "string", "maxLength": 4000},
                    "at": _EPOCH,
                    "backup": BACKUP_SCHEMA,
                },
                # a backup event says which backup; no other kind carries one
                "if": {"properties": {"kind": {"const": "backup"}}},
                "then": {"required": ["backup"]},
                "else": {"not": {"required": ["backup"]}},
            },
        }
    },
}

_VIEW = jsonschema.Draft202012Validator(VIEW_SCHEMA)
_EVENTS = jsonschema.Draft202012Validator(EVENTS_SCHEMA)


@dataclass(frozen=True)
class DbEvent:
    id: str
    kind: str
    host: str
    message: str
    at: float
    backup: dict[str, Any] | None = None


def parse_view(body: bytes) -> dict[str, Any]:
    """{"observed": float, "hosts": [...]}, or BadInput naming the first problem."""
    data = checked_json(body, _VIEW)
    names = [h["name"] for h in data["hosts"]]
    if len(set(names)) != len(names):
        raise BadInput("$.hosts: a host is listed twice")
    return {"observed": float(data["observed"]), "hosts": data["hosts"]}


def parse_events(body: bytes) -> list[DbEvent]:
    data = checked_json(body, _EVENTS)
    return [
        DbEvent(e["id"], e["kind"], e["host"], e["message"], float(e["at"]), e.get("backup")) for e in data["events"]
    ]
