"""Signed bundles: each host's bundle is rendered once per roles.yaml load and kept; the copy without
secrets is signed and kept until half its lifetime is gone; the copy with secrets is built and signed for each
request that may have it. Every signed bundle names the cluster and its generation, and expires."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiln import signing
from kiln.bundle import Bundle
from kiln.model import Cluster, Host
from kiln.render import Renderer
from kiln.secrets import SecretStore

# A change to the cluster model before its bundles are rendered (the lab adds its SSH key to access.ssh_keys, so
# that it reaches the hosts by the same path as an operator's key).
ClusterHook = Callable[[Cluster], Cluster]
BUNDLE_TTL = 24 * 3600.0  # seconds a signed bundle is valid: a replayed old one is refused after that


@dataclass(frozen=True)
class Signed:
    body: bytes
    signature: str  # the X-Kiln-Signature header value
    issued: float = 0.0


class BundleCache:
    def __init__(
        self,
        cluster: Cluster,
        secrets: SecretStore,
        key: Ed25519PrivateKey,
        hook: ClusterHook | None = None,
        *,
        generation: int = 1,
        ttl: float = BUNDLE_TTL,
        retiring: tuple[Host, ...] = (),
    ) -> None:
        """`retiring`: hosts being drained (kiln.render.Renderer): out of the pools, still admitted; no bundle.
        `hook`: applied to the cluster before anything is rendered."""
        if hook is not None:
            cluster = hook(cluster)
        self.cluster = cluster
        self.secrets = secrets
        self.key = key
        self.cluster_id = secrets.cluster_id()
        self.generation = generation
        self.ttl = ttl
        self._renderer = Renderer(cluster, retiring)  # cluster-wide values and files, computed once, not once per host
        self._rendered: dict[str, Bundle] = {}
        self._withheld: dict[str, Signed] = {}
        self._lock = threading.Lock()
        # the previous generation's shared contents: an agent may ask for one after a publication swapped us in
        self.fallback: Mapping[str, str] = {}

    def rendered(self, host: Host) -> Bundle:
        """The host's bundle as rendered (secret values null); rendered on first use, then kept."""
        bundle = self._rendered.get(host.name)
        if bundle is None:
            bundle = self._renderer.bundle(host)
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
        content = self._renderer.shared.get(digest) or self.fallback.get(digest)
        return None if content is None else content.encode()

    def shared_contents(self) -> Mapping[str, str]:
        """sha256 -> content of every cluster-wide file rendered so far (render_all: every one)."""
        return dict(self._renderer.shared)

    def has_secrets(self, host: Host) -> bool:
        return bool(self.rendered(host).secrets)

    def secret_values(self, host: Host) -> dict[str, str]:
        """Every secret the host's bundle references, read from secrets/ (SecretMissing if one is absent)."""
        return self.secrets.values_for(self.rendered(host))

    def with_secrets(self, host: Host, values: dict[str, str]) -> Signed:
        return self._sign(self.rendered(host).with_secret_values(values))

    def without_secrets(self, host: Host) -> Signed:
        """The bundle with every secret value null and "secrets_withheld": true (kept while fresh)."""
        signed = self._withheld.get(host.name)
        if signed is None or time.time() - signed.issued > self.ttl / 2:
            signed = self._sign(self.rendered(host).withheld())
            self._withheld[host.name] = signed
        return signed

    def _sign(self, bundle: Bundle) -> Signed:
        now = time.time()
        body = bundle.stamped(cluster_id=self.cluster_id, generation=self.generation, now=now, ttl=self.ttl).to_json()
        return Signed(body, signing.sign(body, self.key), now)
