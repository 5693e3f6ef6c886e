"""Fuzzed but valid roles.yaml files validate, render, and every real checker accepts what they render.

Hypothesis draws clusters the schema admits: names, domains, static roots, database names, URLs and sizes from the
schema's own patterns (so a pattern that admits something a config cannot hold is found here), role counts within
their limits, subnets and addresses, ports, balance, priorities, and optional keys left out. Each example is
checked on its hosts by nft, haproxy, keepalived, nginx and mariadbd, as tests/integration/test_render_checkers.py
does for the shipped cluster. A handful of examples, a few seconds each.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.model import Cluster, parse_roles, schema
from kiln.render.check import Checker
from kiln.roles import db
from kiln.secrets import SecretStore
from tests.integration.hostroot import applied_bundles

pytestmark = pytest.mark.integration

COUNTS = {"lb": (2, 3), "web": (1, 3), "app": (1, 3), "db": (1, 3)}  # per role: the fewest and the most drawn
# where subnets are drawn: the private ranges, or anywhere (the schema admits any IPv4 subnet)
RANGES = [ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "0.0.0.0/0")]


def _spec(*path: str) -> dict[str, Any]:
    """The schema of a property ("cluster", "name"), its $ref resolved, its own keywords (maxLength) kept."""
    s = schema()
    node: dict[str, Any] = s
    for key in path:
        node = node["items"] if key == "[]" else node["properties"][key]
    if "$ref" in node:
        node = {**s["$defs"][node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def admitted(*path: str, longest: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    """Strings the schema admits at `path`: drawn from its pattern, within its maxLength; or now and then one
    of `longest` (Hypothesis draws short strings: the longest admitted are where a config's limits are)."""
    spec = _spec(*path)
    pattern, most = spec["pattern"], spec.get("maxLength", 10_000)
    unbounded = re.sub(r"^\^\(\?=[^()]*\)", "^", pattern)  # a length lookahead: drawn without, checked after
    drawn = st.from_regex(unbounded, fullmatch=True).filter(lambda s: bool(re.search(pattern, s)) and len(s) <= most)
    if longest is None:
        return drawn
    return st.one_of(drawn, longest.filter(lambda s: bool(re.search(pattern, s)) and len(s) <= most))


def _optional(draw: st.DrawFn, mapping: dict[str, Any], key: str, values: st.SearchStrategy[Any]) -> None:
    """Set `key`, or leave it out for its schema default."""
    if draw(st.booleans()):
        mapping[key] = draw(values)


@st.composite
def roles_documents(draw: st.DrawFn) -> dict[str, Any]:
    counts = {role: draw(st.integers(*limits)) for role, limits in COUNTS.items()}
    total = sum(counts.values())

    # a subnet with room for every host, the gateway and the VIP
    outer = draw(st.sampled_from(RANGES))
    prefix = draw(st.integers(max(outer.prefixlen, 16), 28))
    index = draw(st.integers(0, 2 ** (prefix - outer.prefixlen) - 1))
    subnet = ipaddress.IPv4Network((int(outer.network_address) + index * 2 ** (32 - prefix), prefix))
    offsets = draw(
        st.lists(st.integers(1, subnet.num_addresses - 2), min_size=total + 2, max_size=total + 2, unique=True)
    )
    gateway, vip, *addresses = (subnet.network_address + o for o in offsets)
    anywhere = st.ip_addresses(v=4).map(str)
    admin = st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(
        lambda a: str(ipaddress.IPv4Network((a[0], a[1]), strict=False))
    )

    longest_name = st.sampled_from("abcdefghijklm").map(lambda c: c * 62 + "1")
    names = draw(
        st.lists(admitted("hosts", "[]", "name", longest=longest_name), min_size=total, max_size=total, unique=True)
    )
    macs = draw(st.lists(st.binary(min_size=6, max_size=6), min_size=total, max_size=total, unique=True))
    priorities = iter(draw(st.lists(st.integers(1, 254), min_size=counts["lb"], max_size=counts["lb"], unique=True)))
    primary = draw(st.integers(0, counts["db"] - 1))
    hosts: list[dict[str, Any]] = []
    for role, count in counts.items():
        for i in range(count):
            n = len(hosts)
            mac = ":".join(f"{b:02x}" for b in macs[n])
            host: dict[str, Any] = {"name": names[n], "role": role, "mac": mac, "ip": str(addresses[n])}
            if role == "lb":
                host["priority"] = next(priorities)
            if role == "db":
                host["db_role"] = "primary" if i == primary else "replica"
            _optional(draw, host, "disk", admitted("hosts", "[]", "disk"))
            hosts.append(host)

    roles: dict[str, dict[str, Any]] = {"lb": {}, "web": {}, "app": {}, "db": {}}
    _optional(draw, roles["lb"], "balance", st.sampled_from(_spec("roles", "lb", "balance")["enum"]))
    _optional(draw, roles["lb"], "virtual_router_id", st.integers(1, 255))
    longest_root = st.just("/" + "/".join(["s" * 60] * 5) + "/")
    _optional(draw, roles["web"], "static_root", admitted("roles", "web", "static_root", longest=longest_root))
    _optional(draw, roles["app"], "port", st.integers(1024, 65535))
    _optional(draw, roles["app"], "workers", st.integers(1, 64))
    reserved = (*db.SYSTEM_SCHEMAS, db.HARDENING_DROPS)
    _optional(
        draw, roles["db"], "database", admitted("roles", "db", "database").filter(lambda d: d.lower() not in reserved)
    )

    image: dict[str, Any] = {"release": "bookworm"}
    _optional(draw, image, "mirror", admitted("image", "mirror"))
    _optional(draw, image, "size", admitted("image", "size"))
    return {
        "version": 1,
        "cluster": {
            "name": draw(admitted("cluster", "name", longest=st.just("k" * 47 + "9"))),
            "domain": draw(admitted("cluster", "domain", longest=st.just("d" * 60 + ".com"))),
        },
        "network": {
            "subnet": str(subnet),
            "gateway": str(gateway),
            "dns": draw(st.lists(anywhere, min_size=1, max_size=3)),
            "vip": str(vip),
            "admin": draw(st.lists(admin, min_size=1, max_size=3)),
        },
        "provisioning": {"url": draw(admitted("provisioning", "url"))},
        "image": image,
        "roles": roles,
        "hosts": draw(st.permutations(hosts)),
    }


def _checked_hosts(cluster: Cluster) -> Iterator[str]:
    """Every load balancer (each has its own peers and priority), and the first host of each other kind: web, app,
    the db primary and a db replica."""
    yield from (h.name for h in cluster.by_role("lb"))
    for role in ("web", "app"):
        yield cluster.by_role(role)[0].name
    assert cluster.db_primary is not None
    yield cluster.db_primary.name
    yield from (h.name for h in cluster.db_replicas[:1])


@pytest.fixture(scope="module")
def checker() -> Iterator[Checker]:
    with Checker() as c:
        yield c


def refusals(cluster: Cluster, checker: Checker, work: Path) -> list[str]:
    """Render the cluster and run every checker on the checked hosts' configs: what the checkers refused."""
    store = SecretStore(work / "secrets")
    store.ensure(cluster)
    bundles = applied_bundles(cluster, store)
    return [r.format() for name in _checked_hosts(cluster) for r in checker.check(bundles[name])]


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=roles_documents())
def test_fuzzed_valid_roles_render_configs_every_checker_accepts(
    doc: dict[str, Any], checker: Checker, tmp_path_factory: pytest.TempPathFactory
):
    text = yaml.safe_dump(doc, sort_keys=False)
    cluster = parse_roles(text)  # valid: InvalidRoles here names the problem
    refused = refusals(cluster, checker, tmp_path_factory.mktemp("fuzz"))
    assert not refused, "roles.yaml:\n" + text + "\n".join(refused)


def test_the_checkers_refuse_a_name_the_schema_used_to_admit(cluster: Cluster, checker: Checker, tmp_path: Path):
    """The harness can fail: 'web2\\n' (what the old pattern's $ let through) breaks haproxy's server line."""
    hosts = tuple(replace(h, name="web2\n") if h.name == "web2" else h for h in cluster.hosts)
    refused = refusals(replace(cluster, hosts=hosts), checker, tmp_path)
    assert any("haproxy" in r for r in refused), refused
