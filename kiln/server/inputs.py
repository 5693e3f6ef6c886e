"""What clients send, parsed and checked at the edge: MAC addresses and event bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema

from kiln import mac
from kiln.server.states import REPORTED_STEPS, STATUSES

MAX_EVENT_BYTES = 16 * 1024
MAX_DETAIL_CHARS = 4000
MAX_SAID_CHARS = 300  # of a refusal's reason (it may quote what was sent)

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["step", "status"],
    "properties": {
        "step": {"enum": list(REPORTED_STEPS)},
        "status": {"enum": list(STATUSES)},
        "detail": {"type": "string", "maxLength": MAX_DETAIL_CHARS},
        "at": {"type": "string", "maxLength": 64},
        "duration": {"type": "number", "minimum": 0, "maximum": 86400 * 7},
        "generation": {"type": "integer", "minimum": 1, "maximum": 2**62},  # converge: the generation it is about
    },
}
_EVENT_VALIDATOR = jsonschema.Draft202012Validator(EVENT_SCHEMA)


class BadInput(ValueError):
    """The client sent something malformed; the message says what and what is expected."""


def parse_mac(value: str | None) -> str:
    """A MAC as lower case, colon separated; BadInput unless it is six hex pairs (':' or '-')."""
    if not value:
        raise BadInput("missing mac parameter (expected mac=aa:bb:cc:dd:ee:ff)")
    try:
        return mac.normalize(value)
    except ValueError:
        raise BadInput(f"malformed MAC {value[:40]!r} (expected six hex pairs such as 52:54:00:10:00:11)") from None


@dataclass(frozen=True)
class Event:
    step: str
    status: str
    detail: str
    at: str | None
    duration: float | None
    generation: int | None = None


def checked_json(body: bytes, validator: jsonschema.Draft202012Validator) -> Any:
    """The body's JSON when `validator` accepts it, else BadInput naming the first problem (JSON syntax, shape,
    values) with where it is; a long value is told by the rule it breaks rather than quoted."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"the body is not valid JSON: {e}") from None
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        said = error.message
        if len(said) > MAX_SAID_CHARS:
            said = f"does not satisfy {error.validator} {json.dumps(error.validator_value)[:100]}"
        raise BadInput(f"{where}: {said}")
    return data


def parse_event(body: bytes) -> Event:
    """An event body, or BadInput naming the first problem (JSON syntax, shape, values)."""
    data = checked_json(body, _EVENT_VALIDATOR)
    duration = data.get("duration")
    return Event(
        data["step"],
        data["status"],
        data.get("detail", ""),
        data.get("at"),
        float(duration) if duration is not None else None,
        data.get("generation"),
    )
