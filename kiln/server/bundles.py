"""Signed bundles: each host's bundle is rendered once per roles.yaml load and kept; the copy without
secrets is signed once; the copy with secrets is built and signed for the one fetch that gets it."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiln import bundle as bundle_format
from kiln import signing
from kiln.model import Cluster, Host
from kiln.render import render_host
from kiln.render.context import cluster_view
from kiln.secrets import SecretStore

# A change every served bundle gets after rendering and before signing (the lab adds its SSH access).
BundleHook = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Signed:
    body: bytes
    signature: str  # the X-Kiln-Signature header value


class BundleCache:
    def __init__(
        self, cluster: Cluster, secrets: SecretStore, key: Ed25519PrivateKey, hook: BundleHook | None = None
    ) -> None:
        self.cluster = cluster
        self.secrets = secrets
        self.key = key
        self.hook = hook
        self._view = cluster_view(cluster)  # cluster-wide values, computed once, not once per host
        self._shared: dict[str, str] = {}  # cluster-wide files, rendered once
        self._rendered: dict[str, dict[str, Any]] = {}
        self._withheld: dict[str, Signed] = {}
        self._lock = threading.Lock()

    def rendered(self, host: Host) -> dict[str, Any]:
        """The host's bundle as rendered (secret values null); rendered on first use, then kept."""
        bundle = self._rendered.get(host.name)
        if bundle is None:
            bundle = render_host(self.cluster, host, self._view, self._shared)
            if self.hook is not None:
                bundle = self.hook(bundle)
            with self._lock:
                bundle = self._rendered.setdefault(host.name, bundle)
        return bundle

    def render_all(self) -> int:
        """Render every host's bundle now (at startup), so template errors show before any machine boots and
        no bundle fetch waits for rendering. Return how many."""
        for host in self.cluster.hosts:
            self.rendered(host)
        return len(self.cluster.hosts)

    def has_secrets(self, host: Host) -> bool:
        return bool(self.rendered(host)["secrets"])

    def secret_values(self, host: Host) -> dict[str, str]:
        """Every secret the host's bundle references, read from secrets/ (SecretMissing if one is absent)."""
        return {name: self.secrets.value(name) for name in bundle_format.secret_names(self.rendered(host))}

    def with_secrets(self, host: Host, values: dict[str, str]) -> Signed:
        bundle = copy.deepcopy(self.rendered(host))
        for secret in bundle["secrets"]:
            secret["value"] = values[secret["name"]]
        bundle["secrets_withheld"] = False
        body = bundle_format.dumps(bundle)
        return Signed(body, signing.sign(body, self.key))

    def without_secrets(self, host: Host) -> Signed:
        """The bundle with every secret value null and "secrets_withheld": true (signed once, then kept)."""
        signed = self._withheld.get(host.name)
        if signed is None:
            bundle = dict(self.rendered(host))
            bundle["secrets_withheld"] = bool(bundle["secrets"])
            body = bundle_format.dumps(bundle)
            signed = Signed(body, signing.sign(body, self.key))
            self._withheld[host.name] = signed
        return signed
