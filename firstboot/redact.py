"""Secret values never leave the agent: every text bound for a log, the state file, status or an error passes here."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.bundle import Bundle

MASK = "***"
MIN_PART = 12  # lines of a multi-line secret (a PEM key) this long are masked on their own too


class Redactor:
    """Masks every registered secret value, and each long line of multi-line values, in any text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._needles: list[str] = []

    def add(self, value: str | None) -> None:
        if not value:
            return
        parts = {value, value.strip()}
        parts |= {line.strip() for line in value.splitlines() if len(line.strip()) >= MIN_PART}
        with self._lock:
            # longest first, so a whole value is masked before its lines are
            self._needles = sorted(set(self._needles) | {p for p in parts if p}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text


REDACTOR = Redactor()


def redact(text: object) -> str:
    return REDACTOR(str(text))


def register_secrets(bundle: Bundle) -> None:
    """Mask the bundle's secret values (those it carries) in every text from now on."""
    for secret in bundle.secrets:
        REDACTOR.add(secret.value)


class RedactingFilter(logging.Filter):
    """A logging filter that formats the record's message and exception text, then masks secrets in both."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
