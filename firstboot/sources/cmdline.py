"""The kernel command line: kiln.url=, kiln.host=, BOOTIF= (iPXE passes the boot NIC's MAC)."""

from __future__ import annotations

from firstboot.paths import Paths
from firstboot.sources import Settings, Source, parse_key_values, source_from_mapping


def source(paths: Paths, settings: Settings) -> Source | None:
    try:
        text = paths.cmdline.read_text()
    except FileNotFoundError:
        return None
    return source_from_mapping(dict(parse_key_values(text)), "kernel command line")


def bootif(paths: Paths) -> str:
    """BOOTIF from the command line even when kiln.url is absent (identity only)."""
    try:
        return parse_key_values(paths.cmdline.read_text()).get("mac", "")
    except FileNotFoundError:
        return ""
