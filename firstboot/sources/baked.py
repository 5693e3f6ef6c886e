"""The URL baked into the image at build time: /etc/kiln/agent.json {"url": ...}; the server finds the host by MAC."""

from __future__ import annotations

from firstboot.paths import Paths
from firstboot.sources import Settings, Source, read_json_source


def source(paths: Paths, settings: Settings) -> Source | None:
    return read_json_source(paths.agent_json, "baked URL")
