"""The server's bundle cache: bundles as render_cluster makes them, the cluster hook applied before rendering."""

from __future__ import annotations

import json
from dataclasses import replace

from kiln import signing
from kiln.model import Cluster
from kiln.render import render_cluster
from kiln.server.bundles import BundleCache


def test_cached_bundles_equal_a_full_render(cluster, secret_store):
    cache = BundleCache(cluster, secret_store, signing.generate_private_key())
    assert cache.render_all() == len(cluster.hosts)
    assert {h.name: cache.rendered(h) for h in cluster.hosts} == render_cluster(cluster)


def test_the_hook_change_is_in_the_signed_body(cluster, secret_store):
    """The lab's hook adds its key to the model: every signed bundle gives the admin account that key."""
    key = signing.generate_private_key()
    lab_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFBzeWOFzYGdjWwrAlqJAJxZqUYAJKnmcP0UEySdAc1U kiln-lab"

    def add_key(c: Cluster) -> Cluster:
        return replace(c, access=c.access.with_keys(lab_key))

    cache = BundleCache(cluster, secret_store, key, add_key)
    signed = cache.without_secrets(cluster.host("web1"))
    signing.verify(signed.body, signed.signature, key.public_key())
    assert json.loads(signed.body)["admin"] == {"name": "kiln", "keys": [lab_key]}
    assert cluster.access.ssh_keys == ()
