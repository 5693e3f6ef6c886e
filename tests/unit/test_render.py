"""What every host's bundle holds; derived values (peers, ids, priorities) computed right."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kiln import bundle as b
from kiln import cli
from kiln.bundle import BUNDLE_SCHEMA
from kiln.model import parse_roles
from kiln.project import Project
from kiln.render import Rendered, render, render_cluster

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rendered(cluster) -> Rendered:
    return render(cluster)


@pytest.fixture(scope="module")
def bundles(rendered: Rendered) -> dict[str, b.Bundle]:
    return rendered.bundles


def _file(rendered: Rendered, host: str, path: str) -> str:
    """A file's text, inline or shared."""
    return rendered.content(rendered.bundles[host], path)


def test_every_host_gets_a_bundle_bound_to_its_identity(rendered, bundles, cluster):
    assert set(bundles) == {h.name for h in cluster.hosts}
    for host in cluster.hosts:
        bundle = bundles[host.name]
        assert bundle.schema == BUNDLE_SCHEMA
        assert bundle.host == b.HostInfo(
            name=host.name, role=host.role, mac=host.mac, ip=str(host.ip), fqdn=f"{host.name}.foobar"
        )
        assert _file(rendered, host.name, "/etc/hostname") == f"{host.name}\n"
        assert b.Bundle.from_json(bundle.to_json()) == bundle, "every rendered bundle fits the contract"


def test_secrets_are_referenced_never_inlined(bundles, secret_store):
    for bundle in bundles.values():
        text = bundle.to_json().decode()
        for name in ("db_app_password", "db_replication_password", "db_admin_password", "db_monitor_password"):
            assert secret_store.value(name) not in text
        assert secret_store.value("journal_key", bundle.host.name) not in text
        assert all(s.value is None for s in bundle.secrets)
    journal = ["journal_key", "journal_pem", "journal_ca"]  # every host's, with a mon host (kiln/roles/journal.py)
    assert bundles["lb1"].secret_names() == ["tls_pem", *journal]
    assert set(bundles["db2"].secret_names()) == {
        "db_app_password",
        "db_replication_password",
        "db_admin_password",
        "db_monitor_password",
        *journal,
    }
    assert bundles["app1"].secret_names() == ["db_app_password", *journal]
    assert bundles["web1"].secret_names() == journal


def test_lb_pair_master_and_peers(rendered, bundles):
    lb1 = _file(rendered, "lb1", "/etc/keepalived/keepalived.conf")
    lb2 = _file(rendered, "lb2", "/etc/keepalived/keepalived.conf")
    assert "state BACKUP" in lb1 and "priority 150" in lb1 and "10.10.0.12" in lb1
    assert "state BACKUP" in lb2 and "priority 100" in lb2 and "10.10.0.11" in lb2
    # not ready (HAProxy sees no web node UP): below every ready LB, not FAULT; a returning LB waits before preempting
    assert "weight -51" in lb1 and "init_fail" in lb1 and "preempt_delay 10" in lb1
    assert "vrrp_strict" not in lb1
    haproxy = _file(rendered, "lb1", "/etc/haproxy/haproxy.cfg")
    assert "server web1 10.10.0.21:80 check" in haproxy and "server web2 10.10.0.22:80 check" in haproxy
    assert "option httpchk GET /nginx-health" in haproxy and "Strict-Transport-Security" in haproxy
    assert "monitor fail if { nbsrv(web_pool) lt 1 }" in haproxy
    nginx = _file(rendered, "web1", "/etc/nginx/conf.d/kiln-site.conf")
    assert "location = /nginx-health {" in nginx


def test_db_server_ids_unique_and_replica_read_only(rendered, bundles):
    cnfs = {
        n: _file(rendered, n, "/etc/mysql/mariadb.conf.d/60-kiln.cnf")
        for n, x in bundles.items()
        if x.host.role == "db"
    }
    ids = [line for c in cnfs.values() for line in c.splitlines() if line.startswith("server_id")]
    assert len(set(ids)) == len(ids) == 2
    # every db host starts read-only, the primary too: its join, guard or the failover monitor make it writable
    assert all("\nread_only = ON\n" in cnf for cnf in cnfs.values())
    assert bundles["db2"].join == b.DbReplicaJoin(
        kind="db-replica",
        database="foobar",
        port=3306,
        server_id=797172300,  # derived from the name "db2", never from its place in the list
        replication_user="repl",
        app_user="app",
        primary="10.10.0.41",
        wait_seconds=900,
    )
    primary = bundles["db1"].join
    assert isinstance(primary, b.DbPrimaryJoin)
    # every db host may follow another after a failover; the monitor's account is for the admin network only
    assert (primary.replica_hosts, primary.app_hosts) == (("10.10.0.41", "10.10.0.42"), ("10.10.0.31",))
    assert primary.monitor_hosts == ("10.10.0.0/255.255.255.0",)


def test_app_writes_to_primary_reads_from_replica(rendered, bundles):
    env = _file(rendered, "app1", "/etc/kiln/app.env")
    assert "KILN_DB_WRITE_HOST=10.10.0.41" in env and "KILN_DB_READ_HOST=10.10.0.42" in env


def test_firewall_admits_each_tier_only_from_the_tier_in_front(rendered, bundles):
    web = _file(rendered, "web1", "/etc/nftables.conf")
    assert 'include "nftables.d/kiln-tiers.nft"' in web and "tcp dport 80 ip saddr $LB_NODES" in web
    tiers = _file(rendered, "web1", "/etc/nftables.d/kiln-tiers.nft")
    assert (
        "define LB_NODES = { 10.10.0.11, 10.10.0.12 }" in tiers
        and "define DB_NODES = { 10.10.0.41, 10.10.0.42 }" in tiers
    )
    assert {f.shared for x in bundles.values() for f in x.files if f.path.endswith("kiln-tiers.nft")} == {
        b.shared_digest(tiers)
    }, "one shared file for every host, named by its digest"
    app = _file(rendered, "app1", "/etc/nftables.conf")
    assert "tcp dport 8080 ip saddr $WEB_NODES" in app
    db = _file(rendered, "db1", "/etc/nftables.conf")
    assert "tcp dport 3306 ip saddr $APP_NODES" in db and "tcp dport 3306 ip saddr $DB_NODES" in db
    lb = _file(rendered, "lb2", "/etc/nftables.conf")
    assert "define LB_PEERS = { 10.10.0.11 }" in lb and "ip protocol vrrp ip saddr $LB_PEERS" in lb
    for bundle in bundles.values():
        nft = _file(rendered, bundle.host.name, "/etc/nftables.conf")
        assert "policy drop;" in nft and "tcp dport 22 ip saddr $ADMIN_NET" in nft


def test_only_nginx_hosts_get_nginx_and_only_web_hosts_proxy_to_every_app(shipped_roles):
    text = shipped_roles.read_text().replace(
        '  - {name: app1, role: app, mac: "52:54:00:10:00:31", ip: 10.10.0.31, bmc: {driver: lab}}',
        '  - {name: app1, role: app, mac: "52:54:00:10:00:31", ip: 10.10.0.31, bmc: {driver: lab}}\n'
        '  - {name: app2, role: app, mac: "52:54:00:10:00:32", ip: 10.10.0.32}',
    )
    more = render(parse_roles(text))
    pool = _file(more, "web2", "/etc/nginx/conf.d/kiln-app-pool.conf")
    assert "server 10.10.0.31:8080" in pool and "server 10.10.0.32:8080" in pool
    assert "upstream app_pool {" not in _file(more, "web2", "/etc/nginx/conf.d/kiln-site.conf")
    assert not any(f.path.startswith("/etc/nginx") for f in more.bundles["app2"].files)


def test_rendering_is_deterministic(cluster):
    first, second = render_cluster(cluster), render_cluster(cluster)
    assert {n: x.to_json() for n, x in first.items()} == {n: x.to_json() for n, x in second.items()}


def test_render_command_writes_bundles_and_file_trees_and_drops_stale_ones(tmp_path: Path, shipped_roles: Path):
    out = tmp_path / "out"
    (out / "ghost").mkdir(parents=True)
    (out / "ghost" / "bundle.json").write_text("{}")
    (out / "notmine").mkdir()
    inv = [sys.executable, "-m", "invoke", "--search-root", str(PROJECT), "render", "--out", str(out)]
    result = subprocess.run(inv, capture_output=True, text=True, check=True)
    assert "rendered 8 hosts" in result.stdout
    bundle = json.loads((out / "db2" / "bundle.json").read_text())
    for f in bundle["files"]:
        written = out / "db2" / "root" / f["path"].lstrip("/")
        if f["shared"]:  # one copy per cluster, hard-linked into each host's tree
            assert written.samefile(out / "_shared" / f["shared"]) and not f["content"]
            assert b.shared_digest(written.read_text()) == f["shared"]
        else:
            assert written.read_text() == f["content"]
        assert oct(written.stat().st_mode & 0o777) == oct(int(f["mode"], 8))
    assert (out / "web1" / "root" / "etc" / "hosts").samefile(out / "db2" / "root" / "etc" / "hosts")
    assert not (out / "ghost").exists() and (out / "notmine").exists()
    (out / "db2" / "root" / "etc" / "stale.conf").write_text("old")
    again = subprocess.run(inv, capture_output=True, text=True, check=True)
    assert "(1 changed)" in again.stdout and "  ~ db2: -/etc/stale.conf\n" in again.stdout, again.stdout
    assert not (out / "db2" / "root" / "etc" / "stale.conf").exists()
    quiet = subprocess.run(inv, capture_output=True, text=True, check=True)
    assert "(0 changed)" in quiet.stdout and "~" not in quiet.stdout
    (out / "_shared" / ("0" * 64)).write_text("a content no host names any more")
    subprocess.run(inv, capture_output=True, text=True, check=True)
    assert not (out / "_shared" / ("0" * 64)).exists()


def test_render_names_what_changed_per_host_and_summarises_the_cluster(
    tmp_path: Path, shipped_roles: Path, capsys: pytest.CaptureFixture[str]
):
    """An operator reviewing a roles.yaml change sees which hosts and files it touches, and SUMMARY.md: the
    cluster on one page (who is where, on which MAC, listening on what, running which services)."""
    out = tmp_path / "out"
    assert cli.render(Project(roles=str(shipped_roles)), out=str(out)) == 0
    first = capsys.readouterr().out
    assert [line for line in first.splitlines() if line.startswith("  + ")] == [
        "  + lb1",
        "  + lb2",
        "  + web1",
        "  + web2",
        "  + app1",
        "  + db1",
        "  + db2",
        "  + mon1",
    ]
    summary = (out / "SUMMARY.md").read_text()
    assert "| db2 | db | 10.10.0.42 | 52:54:00:10:00:42 | smallest usable disk | replica |" in summary
    assert "| lb1 | lb | 10.10.0.11 | 52:54:00:10:00:11 | smallest usable disk | priority 150 |" in summary
    assert "- listens: tcp 3306 from the app hosts" in summary and "tcp 80, 443 from anyone" in summary
    assert "kiln-app.service" in summary.split("## app")[1].split("## db")[0]

    changed = tmp_path / "changed.yaml"
    text = shipped_roles.read_text().replace("balance: roundrobin", "balance: leastconn")
    changed.write_text("\n".join(line for line in text.splitlines() if "web2" not in line) + "\n")
    assert cli.render(Project(roles=str(changed)), out=str(out)) == 0
    report = capsys.readouterr().out.splitlines()
    lb1 = next(line for line in report if line.startswith("  ~ lb1: "))
    assert "/etc/haproxy/haproxy.cfg" in lb1 and "bundle.json" in lb1
    assert "  - web2" in report and not any(line.startswith("  + ") for line in report)
    assert not any("web2" in line for line in report if line.startswith("  ~ ")), "a removed host is not changed"
    assert "web2" not in (out / "SUMMARY.md").read_text()
    assert not (out / "web2").exists()


SECURITY_HEADERS = ("X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy", "Content-Security-Policy")
_NGINX_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{};]|[^\s{};"\'#]+')


@dataclass
class _NginxBlock:
    head: list[str]
    directives: list[list[str]] = field(default_factory=list)
    children: list[_NginxBlock] = field(default_factory=list)

    def add_headers(self) -> dict[str, str]:
        return {d[1]: _unquoted(d[2]) for d in self.directives if d[0] == "add_header"}

    def walk(self) -> Iterator[_NginxBlock]:
        for child in self.children:
            yield child
            yield from child.walk()


def _unquoted(word: str) -> str:
    return word[1:-1] if len(word) > 1 and word[0] == word[-1] and word[0] in "\"'" else word


def _parse_nginx(text: str) -> _NginxBlock:
    """nginx's config as nested blocks of directives (enough of its grammar for kiln's templates)."""
    stack, words = [_NginxBlock(["main"])], []
    for token in _NGINX_TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token == "{":
            block = _NginxBlock(words)
            stack[-1].children.append(block)
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        elif token == ";":
            stack[-1].directives.append(words)
            words = []
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "unbalanced braces"
    return stack[0]


def _locations_dropping_security_headers(site: str) -> list[str]:
    """What a browser would get without a security header: nginx inherits add_header into a block only when the
    block has none of its own, so every block (location, if) with any add_header must set all four, and the public
    server must set them for the blocks that inherit."""
    servers = [s for s in _parse_nginx(site).children if s.head == ["server"]]
    public = [s for s in servers if any(d[0] == "listen" and d[1].endswith(":80") for d in s.directives)]
    assert len(public) == 1, "one server on port 80"
    [server] = public
    wrong = [f"server lacks {h}" for h in SECURITY_HEADERS if h not in server.add_headers()]
    for block in server.walk():
        names = block.add_headers()
        if names and not set(SECURITY_HEADERS) <= set(names):
            wrong.append(f"{' '.join(block.head)} drops {sorted(set(SECURITY_HEADERS) - set(names))}")
    return wrong


def test_every_nginx_location_keeps_the_security_headers(rendered, bundles):
    webs = [n for n, x in bundles.items() if x.host.role == "web"]
    assert webs
    for web in webs:
        site = _file(rendered, web, "/etc/nginx/conf.d/kiln-site.conf")
        [server] = [s for s in _parse_nginx(site).children if s.head == ["server"]][:1]
        assert len([b for b in server.walk() if b.head[0] == "location"]) >= 4, "the parser sees the locations"
        assert _locations_dropping_security_headers(site) == [], web
    # the check fails where the review found the fault: a location with an add_header of its own
    broken = site.replace("expires 7d;", 'expires 7d; add_header Cache-Control "public";', 1)
    assert broken != site
    assert _locations_dropping_security_headers(broken) == [
        f"location /static/ drops {sorted(SECURITY_HEADERS)}",
    ]


def test_haproxy_gives_its_own_answers_nginx_security_headers_and_alone_sets_hsts(rendered, bundles):
    site = _file(rendered, "web1", "/etc/nginx/conf.d/kiln-site.conf")
    [server] = [s for s in _parse_nginx(site).children if s.head == ["server"]][:1]
    nginx = server.add_headers()
    haproxy = _file(rendered, "lb1", "/etc/haproxy/haproxy.cfg")
    after: dict[str, list[str]] = {}  # header -> the rest of its http-after-response rule
    for line in haproxy.splitlines():
        words = shlex.split(line) if line.strip() and not line.strip().startswith("#") else []
        if words[:2] == ["http-after-response", "set-header"]:
            after[words[2]] = words[3:]
    for header in SECURITY_HEADERS:  # the redirect and HAProxy's 503 carry the values nginx sets on pages
        assert after[header][0] == nginx[header], header
        assert after[header][1:] == ["unless", "{", f"res.hdr({header})", "-m", "found", "}"]
    assert after["Strict-Transport-Security"][1:] == ["if", "{", "ssl_fc", "}"]
    assert "http-response set-header" not in haproxy, "http-response skips the answers HAProxy makes itself"
    for bundle in bundles.values():
        for f in bundle.files:
            if f.path != "/etc/haproxy/haproxy.cfg":
                assert "Strict-Transport-Security" not in rendered.content(bundle, f.path), f.path


def _identity(bundle: b.Bundle) -> tuple[object, ...]:
    """What a running host depends on staying put: who it is, and the ids its join and configs carry."""
    join = bundle.join
    ids = tuple(getattr(join, k) for k in ("server_id", "priority", "vip", "interface") if hasattr(join, k))
    return bundle.host, bundle.network.interface, ids


def test_no_identity_depends_on_a_hosts_place_in_roles_yaml(shipped_roles: Path) -> None:
    """Reorder the hosts, insert one in the middle, remove one: every surviving host keeps its identity (MariaDB's
    server_id once came from the position: retiring web2 renumbered db1 and db2 under a running replica)."""
    text = shipped_roles.read_text()
    lines = text.splitlines()
    hosts = [line for line in lines if line.startswith("  - {name:")]
    head = [line for line in lines if not line.startswith("  - {name:")]
    before = render_cluster(parse_roles(text))
    shuffled = [hosts[i] for i in (6, 3, 7, 0, 5, 1, 4, 2) if "web2" not in hosts[i]]
    shuffled.insert(2, '  - {name: db3,  role: db,  mac: "52:54:00:10:00:43", ip: 10.10.0.43, db_role: replica}')
    after = render_cluster(parse_roles("\n".join(head + shuffled) + "\n"))
    assert set(after) == set(before) - {"web2"} | {"db3"}
    for name in set(before) & set(after):
        assert _identity(after[name]) == _identity(before[name]), name
    ids = [x.join.server_id for x in after.values() if isinstance(x.join, b.DbPrimaryJoin | b.DbReplicaJoin)]
    assert len(set(ids)) == len(ids) == 3


def test_retiring_hosts_are_drained_from_the_pools_but_still_let_in(shipped_roles: Path) -> None:
    """The generation between removing web2 and app1 from roles.yaml and dropping them: HAProxy and nginx no longer
    send them requests, but the firewalls and the database still admit them (what they have in flight finishes)."""
    full = parse_roles(shipped_roles.read_text())
    leaving = tuple(h for h in full.hosts if h.name in ("web2", "app1"))
    app2 = '  - {name: app2, role: app, mac: "52:54:00:10:00:32", ip: 10.10.0.32}'
    lines = [
        line
        for line in shipped_roles.read_text().splitlines()
        if not line.startswith(("  - {name: web2,", "  - {name: app1,"))
    ]
    at = next(i for i, line in enumerate(lines) if line.startswith("  - {name: db1"))
    staying = parse_roles("\n".join([*lines[:at], app2, *lines[at:]]) + "\n")
    drained = render(staying, leaving)
    assert set(drained.bundles) == {h.name for h in staying.hosts}, "a retiring host gets no new bundle"
    haproxy = _file(drained, "lb1", "/etc/haproxy/haproxy.cfg")
    assert "server web1 " in haproxy and "web2" not in haproxy
    nginx = _file(drained, "web1", "/etc/nginx/conf.d/kiln-app-pool.conf")
    assert "10.10.0.32:" in nginx and "10.10.0.31:" not in nginx
    tiers = _file(drained, "app2", "/etc/nftables.d/kiln-tiers.nft")
    assert "define WEB_NODES = { 10.10.0.21, 10.10.0.22 }" in tiers
    assert "define APP_NODES = { 10.10.0.32, 10.10.0.31 }" in tiers
    primary = drained.bundles["db1"].join
    assert isinstance(primary, b.DbPrimaryJoin) and set(primary.app_hosts) == {"10.10.0.31", "10.10.0.32"}
    final = render(staying)
    assert "10.10.0.22" not in _file(final, "app2", "/etc/nftables.d/kiln-tiers.nft")
    final_join = final.bundles["db1"].join
    assert isinstance(final_join, b.DbPrimaryJoin) and final_join.app_hosts == ("10.10.0.32",)
