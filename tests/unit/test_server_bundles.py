"""The server's bundle cache: bundles as render_cluster makes them, the hook applied before signing."""

from __future__ import annotations

import json

from kiln import signing
from kiln.bundle import Bundle, File
from kiln.render import render_cluster
from kiln.server.bundles import BundleCache


def test_cached_bundles_equal_a_full_render(cluster, secret_store):
    cache = BundleCache(cluster, secret_store, signing.generate_private_key())
    assert cache.render_all() == len(cluster.hosts)
    assert {h.name: cache.rendered(h) for h in cluster.hosts} == render_cluster(cluster)


def test_the_hook_change_is_in_the_signed_body(cluster, secret_store):
    key = signing.generate_private_key()

    def add_marker(bundle: Bundle) -> Bundle:
        return bundle.extended(files=(File(path="/etc/marker", content="lab\n"),))

    cache = BundleCache(cluster, secret_store, key, add_marker)
    signed = cache.without_secrets(cluster.host("web1"))
    signing.verify(signed.body, signed.signature, key.public_key())
    assert "/etc/marker" in [f["path"] for f in json.loads(signed.body)["files"]]
