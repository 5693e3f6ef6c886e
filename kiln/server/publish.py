"""Publishing roles.yaml to the running server (`./inv apply`, and the server's own start): validated, rendered off
to the side, then swapped in whole as the next generation. Requests see one generation or the next, never a mix.

Removing hosts takes two generations, both asked for by `./inv apply` (kiln/apply.py): first one that names them
as `retiring` (out of every pool, still admitted by firewalls and grants, so what they have in flight finishes),
then, once the peers run it, one without them: their credentials are revoked and they are listed as retired.
A host listed again later starts over as a new one (re-armed).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiln.model import Cluster, Host, InvalidRoles, parse_roles
from kiln.render import RenderError
from kiln.secrets import SecretStore
from kiln.server.bundles import BundleCache, ClusterHook
from kiln.server.store import Published, StateStore


class Rejected(ValueError):
    """A publication that changes nothing: the roles are invalid, or `retiring` names the wrong hosts."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Live:
    """One generation as served: its cluster, its bundles and the hosts it drains."""

    cluster: Cluster
    bundles: BundleCache
    retiring: tuple[Host, ...] = ()
    by_name: dict[str, Host] = field(init=False, repr=False)
    by_mac: dict[str, Host] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {h.name: h for h in self.cluster.hosts})
        object.__setattr__(self, "by_mac", {h.mac: h for h in self.cluster.hosts})

    @property
    def generation(self) -> int:
        return self.bundles.generation

    def known(self) -> dict[str, Host]:
        """Every host this generation knows: listed, and being drained."""
        return {**{h.name: h for h in self.retiring}, **self.by_name}


@dataclass(frozen=True)
class Outcome:
    """What a publication did: the /v1/publish answer."""

    generation: int
    changed: bool  # False: the same roles and drained hosts were published already (same generation)
    added: tuple[str, ...]
    retiring: tuple[str, ...]
    retired: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "changed": self.changed,
            "added": list(self.added),
            "retiring": list(self.retiring),
            "retired": list(self.retired),
        }


POLLS_PER_SECOND = 200  # what the fleet's converge polls may cost the server, together
POLL_FLOOR = 10  # seconds between one host's polls, however small the fleet


def poll_interval(hosts: int) -> int:
    """Seconds a host waits before asking for a newer generation again (the 204's Retry-After): 10 s up to 2000
    hosts, then longer, so 10,000 hosts poll 200 times a second, not 1000."""
    return max(POLL_FLOOR, -(-hosts // POLLS_PER_SECOND))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def identity(host: Host) -> str:
    """What the retired listing keeps of a host roles.yaml no longer names."""
    return f"{host.role} {host.ip} {host.mac}"


@dataclass
class Publisher:
    """Turns roles text into the Live generation the routes serve; one publication at a time."""

    store: StateStore
    secrets: SecretStore
    key: Ed25519PrivateKey
    hook: ClusterHook | None = None
    on_swap: Callable[[Live], None] = lambda live: None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def publish(
        self,
        text: str,
        retiring: Sequence[str] = (),
        *,
        known: Mapping[str, Host],
        before: int = 0,
        file_digest: str = "",
    ) -> tuple[Live, Outcome]:
        """Validate, render and publish `text` with `retiring` (names of hosts it no longer lists, to drain first).
        `known`: the hosts published before (listed or drained), by name; those `text` drops and `retiring` does
        not name are retired now. `before`: the generation served until now.

        Raises Rejected (nothing changes: not the database, not what is served) for invalid roles, a site
        certificate that cannot be served, a `retiring` name that is still listed or was never published."""
        with self._lock:
            try:
                cluster = parse_roles(text)
            except InvalidRoles as e:
                raise Rejected([p.format() for p in e.problems]) from None
            problems = [f"retiring {n}: roles.yaml still lists it" for n in retiring if n in cluster.names]
            problems += [f"retiring {n}: no such host was published" for n in retiring if n not in known]
            if problems:
                raise Rejected(problems)
            drained = tuple(known[n] for n in sorted(set(retiring)))
            self.secrets.ensure(cluster)
            problems = self.secrets.check_site(cluster)
            if problems:  # the load balancers would serve it: refuse before any host gets it
                raise Rejected(["the site certificate cannot be served: " + "; ".join(problems)])
            bundles = BundleCache(cluster, self.secrets, self.key, self.hook, retiring=drained)
            try:
                bundles.render_all()  # every template error shows now, before anything is published
            except RenderError as e:
                raise Rejected([f"cannot render the bundles: {e}"]) from None
            generation = self.store.publish(
                digest(text),
                roles=text,
                retiring=[h.name for h in drained],
                floor=self.secrets.generation(),
                file_digest=file_digest,
            )
            self.secrets.note_generation(generation)
            bundles.generation = generation
            self.store.ensure_hosts(h.name for h in cluster.hosts)
            self.store.forget_unknown(h.mac for h in cluster.hosts)
            gone = {n: identity(h) for n, h in known.items() if n not in cluster.names and h not in drained}
            retired = self.store.retire(gone)
            live = Live(cluster, bundles, drained)
            self.on_swap(live)
            outcome = Outcome(
                generation=generation,
                changed=generation != before,
                added=tuple(h.name for h in cluster.hosts if h.name not in known),
                retiring=tuple(h.name for h in drained),
                retired=tuple(retired),
            )
            return live, outcome

    def follow(self, published: Published, known: Mapping[str, Host]) -> Live:
        """Serve what another server sharing this database published (PostgreSQL): render it, publish nothing."""
        with self._lock:
            cluster = parse_roles(published.roles)
            drained = tuple(known[n] for n in published.retiring if n in known)
            bundles = BundleCache(
                cluster, self.secrets, self.key, self.hook, generation=published.generation, retiring=drained
            )
            bundles.render_all()
            live = Live(cluster, bundles, drained)
            self.on_swap(live)
            return live
