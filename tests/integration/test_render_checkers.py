"""Every rendered config passes its real checker, at its real path, as if applied to a host of its role
(kiln/render/check.py: what `./inv apply` runs before it publishes).

And the harness can fail: a config with one bad line is refused by the same checker, named in the refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kiln.bundle import Bundle
from kiln.render.check import Checker, checked_files, missing_tools
from tests.integration.hostroot import applied_bundles

pytestmark = pytest.mark.integration

if missing_tools():
    pytest.skip(f"checkers missing: {missing_tools()} (./inv test installs them)", allow_module_level=True)

HOSTS = ("lb1", "lb2", "web1", "web2", "app1", "db1", "db2", "mon1")


@pytest.fixture(scope="module")
def bundles(cluster, secret_store) -> dict[str, Bundle]:
    """Each host's bundle as the agent applies it (shared contents inline, secrets filled in)."""
    return applied_bundles(cluster, secret_store)


@pytest.fixture(scope="module")
def checker() -> Iterator[Checker]:
    with Checker() as c:
        yield c


def test_every_role_has_its_daemons_checkers():
    """The checks are declared where the files are: a role that loses one is caught here."""
    checked = {role: {spec.check[0] for spec in checked_files(role)} for role in ("lb", "web", "app", "db", "mon")}
    assert checked == {
        "lb": {"nft", "visudo", "haproxy", "keepalived"},
        "web": {"nft", "visudo", "nginx"},
        "app": {"nft", "visudo"},
        "db": {"nft", "visudo", "mariadbd"},
        "mon": {"nft", "visudo", "promtool", "amtool"},
    }


@pytest.mark.parametrize("host", HOSTS)
def test_rendered_configs_pass_their_checkers(bundles, checker, host):
    refusals = checker.check(bundles[host])
    assert refusals == [], "\n".join(r.format() for r in refusals)


# One breakage per checker, each a mistake an operator could make by hand-editing the output.
BREAKAGES = [
    ("lb1", "/etc/haproxy/haproxy.cfg", "balance roundrobin", "balance fastest"),
    ("lb1", "/etc/keepalived/keepalived.conf", "interface kiln0", "interface kiln9"),
    ("lb1", "/etc/nftables.conf", "policy drop;", "policy dropp;"),
    ("web1", "/etc/nginx/nginx.conf", "gzip on;", "gzip maybe;"),
    ("db1", "/etc/mysql/mariadb.conf.d/60-kiln.cnf", "binlog_format = ROW", "binlog_format = ROWS"),
    ("app1", "/etc/sudoers.d/60-kiln-admin", "NOPASSWD: ALL", "NOPASSWD ALL"),
    ("mon1", "/etc/prometheus/prometheus.yml", "scrape_interval: 15s", "scrape_interval: 15 seconds"),
    ("mon1", "/etc/prometheus/kiln.rules.yml", "for: ", "fore: "),
    ("mon1", "/etc/prometheus/alertmanager.yml", "group_wait: 10s", "group_wait: soon"),
]
# `promtool check config` checks the rule files prometheus.yml names too: a broken rule is refused by both
ALSO_REFUSED = {"/etc/prometheus/kiln.rules.yml": ["/etc/prometheus/prometheus.yml"]}


@pytest.mark.parametrize("host,path,old,new", BREAKAGES, ids=[f"{b[0]}:{Path(b[1]).name}" for b in BREAKAGES])
def test_the_same_checker_refuses_a_broken_config(bundles, checker, host, path, old, new):
    bundle = bundles[host]
    [target] = [f for f in bundle.files if f.path == path]
    assert old in target.content
    broken = replace(target, content=target.content.replace(old, new))
    files = tuple(broken if f is target else f for f in bundle.files)
    refusals = checker.check(replace(bundle, files=files))
    assert sorted(r.path for r in refusals) == sorted([path, *ALSO_REFUSED.get(path, [])]), [
        r.format() for r in refusals
    ]
