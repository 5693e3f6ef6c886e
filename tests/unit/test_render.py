"""What every host's bundle holds; derived values (peers, ids, priorities) computed right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.bundle import BUNDLE_SCHEMA
from kiln.model import parse_roles
from kiln.render import render_cluster

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundles(cluster):
    return render_cluster(cluster)


def _file(bundle, path):
    [f] = [f for f in bundle["files"] if f["path"] == path]
    return f


def test_every_host_gets_a_bundle_bound_to_its_identity(bundles, cluster):
    assert set(bundles) == {h.name for h in cluster.hosts}
    for host in cluster.hosts:
        b = bundles[host.name]
        assert b["schema"] == BUNDLE_SCHEMA
        assert b["host"] == {
            "name": host.name,
            "role": host.role.value,
            "mac": host.mac,
            "ip": str(host.ip),
            "fqdn": f"{host.name}.foobar",
        }
        assert _file(b, "/etc/hostname")["content"] == f"{host.name}\n"
        assert all(f["path"].startswith("/") and len(f["mode"]) == 4 for f in b["files"])


def test_secrets_are_referenced_never_inlined(bundles, secret_store):
    for b in bundles.values():
        text = json.dumps(b)
        for name in ("db_app_password", "db_replication_password", "db_admin_password"):
            assert secret_store.value(name) not in text
        assert all(s["value"] is None for s in b["secrets"])
    assert [s["name"] for s in bundles["lb1"]["secrets"]] == ["tls_pem"]
    assert {s["name"] for s in bundles["db2"]["secrets"]} == {
        "db_app_password",
        "db_replication_password",
        "db_admin_password",
    }
    assert [s["name"] for s in bundles["app1"]["secrets"]] == ["db_app_password"]
    assert bundles["web1"]["secrets"] == []


def test_lb_pair_master_and_peers(bundles):
    lb1 = _file(bundles["lb1"], "/etc/keepalived/keepalived.conf")["content"]
    lb2 = _file(bundles["lb2"], "/etc/keepalived/keepalived.conf")["content"]
    assert "state BACKUP" in lb1 and "priority 150" in lb1 and "10.10.0.12" in lb1
    assert "state BACKUP" in lb2 and "priority 100" in lb2 and "10.10.0.11" in lb2
    # not ready (HAProxy sees no web node UP): below every ready LB, not FAULT; a returning LB waits before preempting
    assert "weight -51" in lb1 and "init_fail" in lb1 and "preempt_delay 10" in lb1
    assert "vrrp_strict" not in lb1
    haproxy = _file(bundles["lb1"], "/etc/haproxy/haproxy.cfg")["content"]
    assert "server web1 10.10.0.21:80 check" in haproxy and "server web2 10.10.0.22:80 check" in haproxy
    assert "option httpchk GET /nginx-health" in haproxy and "Strict-Transport-Security" in haproxy
    assert "monitor fail if { nbsrv(web_pool) lt 1 }" in haproxy
    nginx = _file(bundles["web1"], "/etc/nginx/conf.d/kiln-site.conf")["content"]
    assert "location = /nginx-health {" in nginx


def test_db_server_ids_unique_and_replica_read_only(bundles):
    cnfs = {
        n: _file(b, "/etc/mysql/mariadb.conf.d/60-kiln.cnf")["content"]
        for n, b in bundles.items()
        if b["host"]["role"] == "db"
    }
    ids = [line for c in cnfs.values() for line in c.splitlines() if line.startswith("server_id")]
    assert len(set(ids)) == len(ids) == 2
    assert "read_only = ON" in cnfs["db2"] and "read_only = OFF" in cnfs["db1"]
    assert bundles["db2"]["join"] == {
        "kind": "db-replica",
        "params": {"database": "foobar", "port": 3306, "replication_user": "repl", "app_user": "app",
                   "server_id": 7, "primary": "10.10.0.41", "wait_seconds": 900},
    }  # fmt: skip
    assert bundles["db1"]["join"]["params"]["replica_hosts"] == ["10.10.0.42"]
    assert bundles["db1"]["join"]["params"]["app_hosts"] == ["10.10.0.31"]


def test_app_writes_to_primary_reads_from_replica(bundles):
    env = _file(bundles["app1"], "/etc/kiln/app.env")["content"]
    assert "KILN_DB_WRITE_HOST=10.10.0.41" in env and "KILN_DB_READ_HOST=10.10.0.42" in env


def test_firewall_admits_each_tier_only_from_the_tier_in_front(bundles):
    web = _file(bundles["web1"], "/etc/nftables.conf")["content"]
    assert "define LB_NODES = { 10.10.0.11, 10.10.0.12 }" in web and "tcp dport 80 ip saddr $LB_NODES" in web
    app = _file(bundles["app1"], "/etc/nftables.conf")["content"]
    assert "tcp dport 8080 ip saddr $WEB_NODES" in app
    db = _file(bundles["db1"], "/etc/nftables.conf")["content"]
    assert "tcp dport 3306 ip saddr $APP_NODES" in db and "tcp dport 3306 ip saddr $DB_NODES" in db
    lb = _file(bundles["lb2"], "/etc/nftables.conf")["content"]
    assert "define LB_PEERS = { 10.10.0.11 }" in lb and "ip protocol vrrp ip saddr $LB_PEERS" in lb
    for b in bundles.values():
        nft = _file(b, "/etc/nftables.conf")["content"]
        assert "policy drop;" in nft and "tcp dport 22 ip saddr $ADMIN_NET" in nft


def test_only_nginx_hosts_get_nginx_and_only_web_hosts_proxy_to_every_app(shipped_roles):
    text = shipped_roles.read_text().replace(
        '  - {name: app1, role: app, mac: "52:54:00:10:00:31", ip: 10.10.0.31}',
        '  - {name: app1, role: app, mac: "52:54:00:10:00:31", ip: 10.10.0.31}\n'
        '  - {name: app2, role: app, mac: "52:54:00:10:00:32", ip: 10.10.0.32}',
    )
    bundles = render_cluster(parse_roles(text))
    site = _file(bundles["web2"], "/etc/nginx/conf.d/kiln-site.conf")["content"]
    assert "server 10.10.0.31:8080" in site and "server 10.10.0.32:8080" in site
    assert not any(f["path"].startswith("/etc/nginx") for f in bundles["app2"]["files"])


def test_rendering_is_deterministic(cluster):
    assert json.dumps(render_cluster(cluster), sort_keys=True) == json.dumps(render_cluster(cluster), sort_keys=True)


def test_render_command_writes_bundles_and_file_trees_and_drops_stale_ones(tmp_path: Path, shipped_roles: Path):
    out = tmp_path / "out"
    (out / "ghost").mkdir(parents=True)
    (out / "ghost" / "bundle.json").write_text("{}")
    (out / "notmine").mkdir()
    inv = [sys.executable, "-m", "invoke", "--search-root", str(PROJECT), "render", "--out", str(out)]
    result = subprocess.run(inv, capture_output=True, text=True, check=True)
    assert "rendered 7 hosts" in result.stdout
    bundle = json.loads((out / "db2" / "bundle.json").read_text())
    for f in bundle["files"]:
        written = out / "db2" / "root" / f["path"].lstrip("/")
        assert written.read_text() == f["content"]
        assert oct(written.stat().st_mode & 0o777) == oct(int(f["mode"], 8))
    assert not (out / "ghost").exists() and (out / "notmine").exists()
    (out / "db2" / "root" / "etc" / "stale.conf").write_text("old")
    again = subprocess.run(inv, capture_output=True, text=True, check=True)
    assert "(0 changed)" in again.stdout
    assert not (out / "db2" / "root" / "etc" / "stale.conf").exists()
