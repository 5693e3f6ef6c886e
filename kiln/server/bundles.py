"""Signed bundles: each host's bundle is rendered once per roles.yaml load and kept; the copy without
secrets is signed once; the copy with secrets is built and signed for the one fetch that gets it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiln import signing
from kiln.bundle import Bundle
from kiln.model import Cluster, Host
from kiln.render import Renderer
from kiln.secrets import SecretStore

# A change every served bundle gets after rendering and before signing (the lab adds its SSH access).
BundleHook = Callable[[Bundle], Bundle]


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
        self._renderer = Renderer(cluster)  # cluster-wide values and files, computed once, not once per host
        self._rendered: dict[str, Bundle] = {}
        self._withheld: dict[str, Signed] = {}
        self._lock = threading.Lock()

    def rendered(self, host: Host) -> Bundle:
        """The host's bundle as rendered (secret values null); rendered on first use, then kept."""
        bundle = self._rendered.get(host.name)
        if bundle is None:
            bundle = self._renderer.bundle(host)
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

    def shared(self, digest: str) -> bytes | None:
        """A cluster-wide content the bundles name by its sha256 (None for a digest no bundle names)."""
        content = self._renderer.shared.get(digest)
        return None if content is None else content.encode()

    def has_secrets(self, host: Host) -> bool:
        return bool(self.rendered(host).secrets)

    def secret_values(self, host: Host) -> dict[str, str]:
        """Every secret the host's bundle references, read from secrets/ (SecretMissing if one is absent)."""
        return {name: self.secrets.value(name) for name in self.rendered(host).secret_names()}

    def with_secrets(self, host: Host, values: dict[str, str]) -> Signed:
        return self._sign(self.rendered(host).with_secret_values(values))

    def without_secrets(self, host: Host) -> Signed:
        """The bundle with every secret value null and "secrets_withheld": true (signed once, then kept)."""
        signed = self._withheld.get(host.name)
        if signed is None:
            signed = self._withheld.setdefault(host.name, self._sign(self.rendered(host).withheld()))
        return signed

    def _sign(self, bundle: Bundle) -> Signed:
        body = bundle.to_json()
        return Signed(body, signing.sign(body, self.key))
