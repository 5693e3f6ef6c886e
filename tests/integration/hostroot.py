"""Rendered hosts as the agent applies them, for tests that lay them out (kiln/render/check.py) and run them."""

from __future__ import annotations

from dataclasses import replace

from kiln.bundle import Bundle
from kiln.model import Cluster
from kiln.render import render
from kiln.secrets import SecretStore


def applied_bundles(cluster: Cluster, store: SecretStore) -> dict[str, Bundle]:
    """Every host's bundle as the agent applies it: cluster-wide contents inline (the agent fetches them by
    digest), secret values filled in (the server fills them for the fetch)."""
    rendered = render(cluster)
    bundles = {}
    for name, b in rendered.bundles.items():
        files = tuple(replace(f, content=rendered.shared[f.shared], shared="") if f.shared else f for f in b.files)
        bundles[name] = replace(b, files=files).with_secret_values(store.values_for(b))
    return bundles
