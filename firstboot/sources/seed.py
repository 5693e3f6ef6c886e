"""The seed the PXE installer writes into the installed root: /etc/kiln/seed.json {"url", "host", "mac"}."""

from __future__ import annotations

from firstboot.paths import Paths
from firstboot.sources import Settings, Source, read_json_source


def source(paths: Paths, settings: Settings) -> Source | None:
    return read_json_source(paths.seed, "seed file")
