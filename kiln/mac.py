"""The one rule for MAC addresses, shared by roles.yaml, the server and the agent (standard library only).

normalize("52-54-00-10-00-AB")         -> "52:54:00:10:00:ab"
normalize("01-52-54-00-10-00-ab")      -> "52:54:00:10:00:ab"   (BOOTIF: ARP hardware type 1 first)
normalize("garbage")                   -> ValueError
"""

from __future__ import annotations

import re

_PAIRS = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}")  # one separator throughout


def normalize(text: str) -> str:
    """Lower case, colon separated; ValueError unless it is six hex pairs (':' or '-', one BOOTIF '01-' allowed)."""
    raw = text.strip().lower()
    if len(raw) == 20 and raw.startswith("01-"):
        raw = raw[3:]
    if not _PAIRS.fullmatch(raw):
        raise ValueError(f"{text[:40]!r} is not a MAC address (six hex pairs such as 52:54:00:10:00:11)")
    return raw.replace("-", ":")
