"""lb, web, app and db joined for real in network namespaces, with the configs `./inv render` makes.

Each host gets its rendered bundle applied by `firstboot apply` (files, secrets), its rendered nftables
ruleset loaded by the agent's firewall step inside its namespace, its daemons started (as systemd would)
from the applied files, then the agent's join step for its role. A client at the gateway address then
reaches the app through the VIP: HAProxy (TLS, cluster CA) → nginx → gunicorn → MariaDB.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln.bundle import Bundle, DbPrimaryJoin, LbJoin, ServiceJoin
from kiln.model import Cluster
from kiln.monitoring import TEXTFILE_DIR
from kiln.roles.lb import READY_SCRIPT as HAPROXY_READY_SCRIPT
from kiln.roles.lb import VRRP_STATE_SCRIPT
from kiln.secrets import SecretStore
from tests.integration import agent_mariadb
from tests.integration.agent_netns import SWITCH, Lab, firstboot, host_tree, lab
from tests.integration.bmc import free_port
from tests.integration.hostroot import applied_bundles

pytestmark = pytest.mark.integration
HOSTS = ("db1", "db2", "app1", "web1", "web2", "lb1", "lb2")
JOIN_DEADLINE = "40"


def file_of(tree: Path, path: str) -> Path:
    return tree / path.lstrip("/")


def relocate_haproxy(tree: Path, run: Path) -> Path:
    cfg = file_of(tree, "/etc/haproxy/haproxy.cfg")
    text = cfg.read_text().replace("/run/haproxy/admin.sock", str(run / "admin.sock"))
    text = text.replace("crt /etc/haproxy/certs/site.pem", f"crt {file_of(tree, '/etc/haproxy/certs/site.pem')}")
    out = run / "haproxy.cfg"
    out.write_text(text)
    return out


def relocate_nginx(tree: Path, run: Path, cache: Path) -> Path:
    """Paths moved beside the tree; the proxy cache where nginx's workers (www-data) can reach it."""
    cache.mkdir(mode=0o700)
    shutil.chown(cache, "www-data", "www-data")
    site = file_of(tree, "/etc/nginx/conf.d/kiln-site.conf")
    site.write_text(site.read_text().replace("/var/cache/nginx/kiln", str(cache)))
    text = file_of(tree, "/etc/nginx/nginx.conf").read_text()
    text = text.replace("/run/nginx.pid", str(run / "nginx.pid")).replace("/var/log/nginx/", f"{run}/")
    text = text.replace("/etc/nginx/conf.d/kiln-", f"{file_of(tree, '/etc/nginx/conf.d')}/kiln-")
    out = run / "nginx.conf"
    out.write_text(text)
    return out


def relocate_keepalived(tree: Path, run: Path) -> Path:
    """Without process tracking: keepalived learns of processes through the kernel's proc connector, which
    answers in the initial network namespace only (errno 111 here); on the hosts themselves it works. The
    readiness script stays, run from the host's tree (HAProxy's monitor URI on this namespace's loopback)."""
    text = file_of(tree, "/etc/keepalived/keepalived.conf").read_text()
    text = re.sub(r"vrrp_track_process track_haproxy \{.*?\n\}\n", "", text, flags=re.S)
    text = re.sub(r"\n\s*track_process \{.*?\}", "", text, flags=re.S)
    assert "track_process" not in text, text
    script = file_of(tree, HAPROXY_READY_SCRIPT)
    assert f'script "{HAPROXY_READY_SCRIPT}"' in text
    text = text.replace(f'script "{HAPROXY_READY_SCRIPT}"', f'script "{script}"')
    # the VIP state for the node exporter: written to this LB's own textfile directory
    textfile = run / "textfile"
    textfile.mkdir()
    notify = run / "kiln-vrrp-state"
    notify.write_text(file_of(tree, VRRP_STATE_SCRIPT).read_text().replace(TEXTFILE_DIR, str(textfile)))
    notify.chmod(0o755)
    assert f'notify "{VRRP_STATE_SCRIPT}"' in text
    text = text.replace(f'notify "{VRRP_STATE_SCRIPT}"', f'notify "{notify}"')
    out = run / "keepalived.conf"
    out.write_text(text)
    return out


def app_env(tree: Path) -> dict[str, str]:
    lines = file_of(tree, "/etc/kiln/app.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    env["KILN_DB_PASSWORD_FILE"] = str(tree / env["KILN_DB_PASSWORD_FILE"].lstrip("/"))
    return env


class Cluster6:
    def __init__(self, the_lab: Lab, base: Path, bundles: dict[str, Bundle]) -> None:
        self.lab, self.base, self.bundles = the_lab, base, bundles
        self.trees = {h: base / "trees" / h for h in HOSTS}
        self.db_socket = ""
        self.domain = ""
        self.cluster = ""  # its name
        self.ca = base / "ca.pem"

    def apply(self, host: str, *args: str, ns: bool = False) -> subprocess.CompletedProcess[str]:
        path = self.base / f"{host}.bundle.json"
        argv = firstboot("apply", "--bundle", str(path), "--root", str(self.trees[host]), *args)
        if ns:
            return self.lab.exec(self.lab.ns(host), *argv)
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def join(self, host: str) -> str:
        args = ("--only", "join", "--join-deadline", JOIN_DEADLINE, "--db-socket", self.db_socket)
        result = self.apply(host, *args, ns=True)
        assert result.returncode == 0, f"{host} join:\n{result.stdout}{result.stderr}\n" + self.logs()
        return result.stdout

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.lab.log(name)[-1500:]}" for name, _ in self.lab.processes)


def vip_holders(the_lab: Lab, vip: str) -> list[str]:
    holders = []
    for host in ("lb1", "lb2"):
        out = the_lab.exec(the_lab.ns(host), "ip", "-o", "-4", "addr", "show", "dev", "kiln0").stdout
        if f" {vip}/" in out:
            holders.append(host)
    return holders


CLIENT = r"""
import http.client, json, ssl, sys
ca, vip, domain, method, path, body = sys.argv[1:7]
if method == "HTTP":
    c = http.client.HTTPConnection(vip, 80, timeout=10); c.request("GET", path, headers={"Host": domain})
else:
    ctx = ssl.create_default_context(cafile=ca)
    c = http.client.HTTPSConnection(vip, 443, timeout=10, context=ctx)  # the site certificate names the VIP too
    c.request(method, path, body=body or None, headers={"Host": domain, "Content-Type": "application/json"})
r = c.getresponse()
print(json.dumps({"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
                  "body": r.read().decode(errors="replace")}))
"""


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, cluster: Cluster, secret_store: SecretStore
) -> Iterator[Cluster6]:
    base = tmp_path_factory.mktemp("kiln-agt-tiers")
    bundles = applied_bundles(cluster, secret_store)
    hosts = {h.name: h for h in cluster.hosts}
    shared = Path(tempfile.mkdtemp(prefix="kiln-agt-nginx-"))  # pytest's temp dirs are 0700: www-data cannot enter
    shared.chmod(0o711)
    request_cleanup = shared
    with lab(base, str(cluster.network.gateway), cluster.network.subnet.prefixlen) as the_lab:
        c = Cluster6(the_lab, base, bundles)
        c.domain = cluster.domain
        c.cluster = cluster.name
        c.ca.write_bytes(secret_store.ca_pem.read_bytes())
        for host in HOSTS:
            (base / f"{host}.bundle.json").write_bytes(bundles[host].to_json())
            host_tree(c.trees[host])
            applied = c.apply(host, "--no-services")
            assert applied.returncode == 0, applied.stdout + applied.stderr
            the_lab.host(host, str(hosts[host].ip))
            fw = c.apply(host, "--only", "firewall", ns=True)  # the agent's firewall step, in the host's namespace
            assert fw.returncode == 0 and "ruleset loaded" in fw.stdout, fw.stdout + fw.stderr
        # db1: MariaDB with its rendered config at 10.10.0.41:3306, joined as the primary
        template = agent_mariadb.template_datadir(base)
        cnf = file_of(c.trees["db1"], "/etc/mysql/mariadb.conf.d/60-kiln.cnf").read_text()
        db = agent_mariadb.start("db1-server", base, template, cnf, netns=the_lab.ns("db1"))
        servers = [db]
        try:
            c.db_socket = db.socket
            c.join("db1")
            cnf = file_of(c.trees["db2"], "/etc/mysql/mariadb.conf.d/60-kiln.cnf").read_text()
            replica = agent_mariadb.start("db2-server", base, template, cnf, netns=the_lab.ns("db2"))
            servers.append(replica)
            c.db_socket = replica.socket
            c.join("db2")  # a GTID replica of db1 across the namespaces, through both firewalls
            # app1: the demo app under gunicorn with its rendered env
            app = bundles["app1"].join
            assert isinstance(app, ServiceJoin)
            gunicorn = [str(Path(sys.executable).parent / "gunicorn"), "--bind", app.health_url.split("/")[2]]
            gunicorn += ["--workers", "2", "kilnapp.wsgi:app"]
            the_lab.start("app1-gunicorn", the_lab.ns("app1"), gunicorn, env=app_env(c.trees["app1"]))
            for web in ("web1", "web2"):
                run = base / f"{web}-run"
                run.mkdir()
                conf = relocate_nginx(c.trees[web], run, shared / f"{web}-cache")
                the_lab.start(f"{web}-nginx", the_lab.ns(web), ["nginx", "-c", str(conf), "-g", "daemon off;"])
            for lb in ("lb1", "lb2"):
                run = base / f"{lb}-run"
                run.mkdir()
                ns = the_lab.ns(lb)
                assert the_lab.exec(ns, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1").returncode == 0
                the_lab.start(f"{lb}-haproxy", ns, ["haproxy", "-db", "-f", str(relocate_haproxy(c.trees[lb], run))])
                keepalived = ["keepalived", "--dont-fork", "--log-console", "--vrrp"]
                keepalived += ["-f", str(relocate_keepalived(c.trees[lb], run))]
                keepalived += ["-p", str(run / "keepalived.pid"), "-r", str(run / "vrrp.pid")]
                the_lab.start(f"{lb}-keepalived", ns, keepalived)
            yield c
        finally:
            for server in servers:
                server.stop()
            shutil.rmtree(request_cleanup, ignore_errors=True)


def client(c: Cluster6, method: str, path: str, body: str = "") -> dict[str, Any]:
    """A request from the gateway address (outside every tier) to the VIP, pinning the cluster CA."""
    vip = c.bundles["lb1"].network.vip
    result = c.lab.exec(SWITCH, sys.executable, "-c", CLIENT, str(c.ca), vip, c.domain, method, path, body)
    assert result.returncode == 0, result.stderr + c.logs()
    return json.loads(result.stdout)


def test_each_tier_joins(running: Cluster6) -> None:
    assert "app healthy with its database 10.10.0.41:3306" in running.join("app1")
    assert "nginx answers /health through the app pool" in running.join("web1")
    running.join("web2")
    lb1 = running.join("lb1")
    assert "keepalived priority 150" in lb1 and "haproxy web pool 2/2 UP" in lb1
    lb2 = running.join("lb2")
    assert "keepalived priority 100, a peer holds the VIP" in lb2


def test_exactly_one_load_balancer_holds_the_vip(running: Cluster6) -> None:
    assert vip_holders(running.lab, running.bundles["lb1"].network.vip) == ["lb1"]


def test_a_request_through_haproxy_reaches_the_app_and_its_database(running: Cluster6) -> None:
    page = client(running, "GET", "/")
    assert page["status"] == 200, page
    assert "served by app node <b>app1</b>" in page["body"]
    primary = running.bundles["db1"].join
    assert isinstance(primary, DbPrimaryJoin)
    primary_id = primary.server_id
    assert f"(10.10.0.41, server_id {primary_id})" in page["body"], page["body"]  # writes: the primary db1
    assert "replica, read-only" in page["body"]  # reads: app1's replica db2
    assert page["headers"]["strict-transport-security"].startswith("max-age=")
    created = client(running, "POST", "/api/notes", json.dumps({"text": "through the VIP"}))
    assert created["status"] == 201, created
    for _ in range(50):  # read from the replica: the note arrives by replication
        notes = json.loads(client(running, "GET", "/api/notes")["body"])
        if notes["notes"]:
            break
        time.sleep(0.1)
    assert notes["read_from"] == "10.10.0.42"
    assert [n["text"] for n in notes["notes"]] == ["through the VIP"]
    plain = client(running, "HTTP", "/")
    assert plain["status"] == 301 and plain["headers"]["location"].startswith("https://")


def test_the_firewall_drops_what_the_matrix_does_not_allow(running: Cluster6) -> None:
    # the app port is open to the web tier only: from a load balancer it is dropped (times out, no refusal)
    probe = (
        "import socket\ntry:\n socket.create_connection(('10.10.0.31', 8080), timeout=1); print('open')\n"
        "except OSError as e: print(type(e).__name__)"
    )
    assert running.lab.exec(running.lab.ns("lb1"), sys.executable, "-c", probe).stdout.strip() in (
        "timeout",
        "TimeoutError",
    )
    assert running.lab.exec(running.lab.ns("web1"), sys.executable, "-c", probe).stdout.strip() == "open"


def test_rejoining_changes_nothing(running: Cluster6) -> None:
    running.db_socket = str(running.base / "db1-server" / "mysqld.sock")
    assert "primary unchanged" in running.join("db1")
    assert "keepalived priority 150, " in running.join("lb1")
    assert vip_holders(running.lab, running.bundles["lb1"].network.vip) == ["lb1"]


def vrrp_state(c: Cluster6, lb: str) -> str:
    """What the LB's textfile says (kiln_keepalived_vrrp_state's line), "" before keepalived's first notify."""
    prom = c.base / f"{lb}-run" / "textfile" / "kiln-keepalived.prom"
    return (
        next((line for line in prom.read_text().splitlines() if line.startswith("kiln_")), "") if prom.exists() else ""
    )


def wait_for_vrrp_states(c: Cluster6, want: dict[str, int], seconds: float) -> dict[str, str]:
    vip = c.bundles["lb1"].network.vip
    lines = {
        lb: f'kiln_keepalived_vrrp_state{{vrrp_instance="{c.cluster}_vip",vip="{vip}"}} {held}'
        for lb, held in want.items()
    }
    deadline = time.monotonic() + seconds
    while (seen := {lb: vrrp_state(c, lb) for lb in want}) != lines:
        assert time.monotonic() < deadline, f"{seen} after {seconds} s, not {lines}\n" + c.logs()
        time.sleep(0.2)
    return seen


def test_each_lb_tells_the_node_exporter_whether_it_holds_the_vip(running: Cluster6, tmp_path: Path) -> None:
    """keepalived's notify runs the rendered kiln-vrrp-state at each transition: lb1 (MASTER) writes 1, lb2 0; a
    real node exporter reads lb1's file as the alert rules expect (VipNotHeld, VipHeldTwice)."""
    wait_for_vrrp_states(running, {"lb1": 1, "lb2": 0}, 30)
    port = free_port()
    textfile = running.base / "lb1-run" / "textfile"
    exporter = ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults"]
    exporter += ["--collector.textfile", f"--collector.textfile.directory={textfile}"]
    with open(tmp_path / "exporter.log", "wb") as log:
        process = subprocess.Popen(exporter, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    metrics = r.read().decode()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "exporter.log").read_text()
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(10)
    vip = running.bundles["lb1"].network.vip
    found = [
        s
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "kiln_keepalived_vrrp_state"
    ]
    assert [(s.labels, s.value) for s in found] == [({"vrrp_instance": f"{running.cluster}_vip", "vip": vip}, 1.0)]


def wait_for_holder(c: Cluster6, want: list[str], seconds: float) -> float:
    vip = c.bundles["lb1"].network.vip
    began = time.monotonic()
    while vip_holders(c.lab, vip) != want:
        assert time.monotonic() - began < seconds, f"VIP not on {want} within {seconds} s\n" + c.logs()
        time.sleep(0.2)
    return time.monotonic() - began


@pytest.mark.slow  # half a minute of VRRP failover and back
def test_the_vip_leaves_an_lb_whose_haproxy_cannot_serve_and_returns_once_it_can(running: Cluster6) -> None:
    """lb1's HAProxy stops: its readiness check fails, its priority drops below lb2's and lb2 takes the VIP.
    HAProxy back: lb1 takes the VIP again only after the check passes again and preempt_delay has passed."""
    wait_for_holder(running, ["lb1"], 30)
    name, haproxy = next((n, p) for n, p in running.lab.processes if n == "lb1-haproxy")
    haproxy.terminate()
    haproxy.wait(10)
    wait_for_holder(running, ["lb2"], 30)  # 3 failed checks 2 s apart, then lb2's preempt_delay (10 s)
    wait_for_vrrp_states(running, {"lb1": 0, "lb2": 1}, 10)  # each transition told by keepalived's notify
    run = running.base / "lb1-run"
    began = time.monotonic()
    running.lab.start(name, running.lab.ns("lb1"), ["haproxy", "-db", "-f", str(run / "haproxy.cfg")])
    back = wait_for_holder(running, ["lb1"], 60)
    assert time.monotonic() - began >= 10, "lb1 preempted before preempt_delay (10 s) passed"
    assert back < 60


@pytest.mark.slow  # 40 s of a stalled HAProxy and after
def test_a_master_whose_haproxy_answers_slowly_keeps_the_vip(running: Cluster6) -> None:
    """HAProxy stalled 20 s on the master (SIGSTOP: the kernel still accepts the check's connection, the answer waits),
    as a starved host answers late: a late answer is not a miss, the VIP stays. With a 2 s read and keepalived's 4 s
    timeout the check failed three times, lb1 fell below lb2 and lb2 took the VIP after its preempt_delay (in the
    lab a booting peer that could not serve took it that way: 15-25 s without an answer)."""
    deadline = time.monotonic() + 60
    while not all("haproxy_ready) succeeded" in running.lab.log(f"{lb}-keepalived") for lb in ("lb1", "lb2")):
        assert time.monotonic() < deadline, "the LBs' readiness checks never passed\n" + running.logs()
        time.sleep(0.5)
    wait_for_holder(running, ["lb1"], 30)
    _, haproxy = next((n, p) for n, p in running.lab.processes if n == "lb1-haproxy")
    vip = running.bundles["lb1"].network.vip
    haproxy.send_signal(signal.SIGSTOP)
    held = []
    try:
        for _ in range(40):  # 20 s: long enough for three misses and lb2's preempt_delay with a 2 s read
            held.append(tuple(vip_holders(running.lab, vip)))
            time.sleep(0.5)
    finally:
        haproxy.send_signal(signal.SIGCONT)
    for _ in range(36):
        held.append(tuple(vip_holders(running.lab, vip)))
        time.sleep(0.5)
    assert set(held) == {("lb1",)}, f"the VIP left lb1: {held}\n" + running.logs()


def test_an_lb_whose_keepalived_runs_another_priority_fails_its_join(running: Cluster6) -> None:
    bundle = running.bundles["lb2"]
    assert isinstance(bundle.join, LbJoin)
    wrong = replace(bundle, join=replace(bundle.join, priority=120))  # the bundle changed; keepalived was not restarted
    path = running.base / "lb2-wrong.bundle.json"
    path.write_bytes(wrong.to_json())
    argv = firstboot("apply", "--bundle", str(path), "--root", str(running.trees["lb2"]), "--only", "join")
    result = running.lab.exec(running.lab.ns("lb2"), *argv)
    assert result.returncode == 1
    assert "keepalived runs with priority 100, the bundle says 120" in result.stdout
    assert "restart keepalived" in result.stdout
