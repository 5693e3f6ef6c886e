"""Every rendered config passes its real checker, at its real path, as if applied to a host of its role.

And the harness can fail: a config with one bad line is refused by the same checker.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from kiln.bundle import Bundle
from tests.integration.hostroot import applied_bundles, lay_out, run_applied

pytestmark = pytest.mark.integration

REQUIRED = ("haproxy", "nginx", "keepalived", "nft", "mariadbd", "unshare", "ip")
missing = [tool for tool in REQUIRED if not shutil.which(tool) and not Path("/usr/sbin", tool).exists()]
if missing:
    pytest.skip(f"checkers missing: {missing} (./inv test installs them)", allow_module_level=True)

CHECKS = {
    # role: [(config path, argv)]
    "lb": [
        ("/etc/haproxy/haproxy.cfg", ["haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg"]),
        ("/etc/keepalived/keepalived.conf", ["keepalived", "--config-test=/etc/keepalived/keepalived.conf"]),
    ],
    "web": [("/etc/nginx/nginx.conf", ["nginx", "-t", "-q", "-c", "/etc/nginx/nginx.conf"])],
    "db": [
        (
            "/etc/mysql/mariadb.conf.d/60-kiln.cnf",
            [
                "mariadbd",
                "--defaults-file=/etc/mysql/mariadb.conf.d/60-kiln.cnf",
                "--user=mysql",
                "--help",
                "--verbose",
            ],
        )
    ],
}
FIREWALL = ("/etc/nftables.conf", ["nft", "-c", "-f", "/etc/nftables.conf"])


@pytest.fixture(scope="module")
def bundles(cluster, secret_store) -> dict[str, Bundle]:
    """Each host's bundle as the agent applies it (shared contents inline, secrets filled in)."""
    return applied_bundles(cluster, secret_store)


@pytest.fixture(scope="module")
def netns():
    """keepalived's config test needs the interface it names (kiln0) to exist: a namespace with a veth of that name."""
    name = f"kiln-t-chk-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "kiln0", "type", "veth", "peer", "name", "kiln0-peer"], check=True
        )
        subprocess.run(["ip", "-n", name, "link", "set", "kiln0", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _cases(cluster_hosts):
    for host, role in cluster_hosts:
        for path, argv in [FIREWALL, *CHECKS.get(role, [])]:
            yield pytest.param(host, path, argv, id=f"{host}:{argv[0]}")


HOSTS = [("lb1", "lb"), ("lb2", "lb"), ("web1", "web"), ("web2", "web"), ("app1", "app"), ("db1", "db"), ("db2", "db")]


@pytest.mark.parametrize("host,path,argv", list(_cases(HOSTS)))
def test_rendered_config_passes_its_checker(bundles, secret_store, tmp_path: Path, netns, host, path, argv):
    root = lay_out(bundles[host], tmp_path / host, secret_store)
    result = run_applied(root, argv, netns=netns)
    assert result.returncode == 0, f"{' '.join(argv)} refused the rendered {path} of {host}:\n{result.stdout}"


# One breakage per checker, each a mistake an operator could make by hand-editing the output.
BREAKAGES = [
    ("lb1", "/etc/haproxy/haproxy.cfg", "balance roundrobin", "balance fastest"),
    ("lb1", "/etc/keepalived/keepalived.conf", "interface kiln0", "interface kiln9"),
    ("lb1", "/etc/nftables.conf", "policy drop;", "policy dropp;"),
    ("web1", "/etc/nginx/nginx.conf", "gzip on;", "gzip maybe;"),
    ("db1", "/etc/mysql/mariadb.conf.d/60-kiln.cnf", "binlog_format = ROW", "binlog_format = ROWS"),
]


@pytest.mark.parametrize("host,path,old,new", BREAKAGES, ids=[f"{b[0]}:{Path(b[1]).name}" for b in BREAKAGES])
def test_the_same_checker_refuses_a_broken_config(bundles, secret_store, tmp_path: Path, netns, host, path, old, new):
    bundle = bundles[host]
    [target] = [f for f in bundle.files if f.path == path]
    assert old in target.content
    broken = replace(target, content=target.content.replace(old, new))
    files = tuple(broken if f is target else f for f in bundle.files)
    root = lay_out(replace(bundle, files=files), tmp_path / host, secret_store)
    [argv] = [argv for p, argv in [FIREWALL, *CHECKS[bundle.host.role]] if p == path]
    result = run_applied(root, argv, netns=netns)
    assert result.returncode != 0, f"{' '.join(argv)} accepted a broken {path}:\n{result.stdout}"
