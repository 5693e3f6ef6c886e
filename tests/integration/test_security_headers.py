"""Every kind of response the web tier sends carries the security headers, through the real HAProxy and nginx.

The reference cluster is rendered and applied as trees (tests/integration/hostroot.py); in network namespaces
lb1 runs HAProxy with its rendered config and the site certificate (the VIP added by hand: keepalived is not
what is tested here), web1 and web2 run nginx with theirs, and a client at the gateway address asks the VIP.
The app pool is a tiny stand-in HTTP server on app1's address, not kilnapp under gunicorn with MariaDB: the
headers are nginx's and HAProxy's job, and the stand-in answers a page and /health as the app would, without
security headers of its own. Each kind of response is checked: an app page, a static file, a missing static
file (nginx's 404), both health endpoints, nginx's 502 with the app down, HAProxy's own 503 with no nginx up,
and HAProxy's redirect to HTTPS. The tests run in file order on one module-wide tier: the last two stop the
stand-in app, then both nginx.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kiln.model import Cluster
from kiln.render.check import lay_out
from kiln.roles import app, lb, web
from kiln.secrets import SecretStore
from tests.integration.agent_netns import Lab, sh
from tests.integration.hostroot import applied_bundles
from tests.integration.test_agent_tiers import file_of, relocate_haproxy, relocate_nginx

pytestmark = pytest.mark.integration

DAEMONS = ("haproxy", "nginx", "ip")
absent = [tool for tool in DAEMONS if not shutil.which(tool) and not Path("/usr/sbin", tool).exists()]
if absent:
    pytest.skip(f"daemons missing: {absent} (./inv test installs them)", allow_module_level=True)

PREFIX = "kiln-hdr-"  # not agent_netns's kiln-agt-: its lab removes namespaces of its names, and may run meanwhile
SWITCH = f"{PREFIX}sw"
SECURITY = ("x-frame-options", "x-content-type-options", "referrer-policy", "content-security-policy")
HSTS = "strict-transport-security"
WAIT = 30  # seconds any one wait may take

STAND_IN_APP = r"""
import http.server, sys
class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # nginx keeps its upstream connections alive
    def do_GET(self):
        body = b"ok\n" if self.path == "/health" else b"<p>a page from the stand-in app</p>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain" if self.path == "/health" else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), App).serve_forever()
"""

CLIENT = r"""
import http.client, json, ssl, sys
ca, vip, domain, scheme, path = sys.argv[1:6]
if scheme == "http":
    c = http.client.HTTPConnection(vip, 80, timeout=10)
else:
    c = http.client.HTTPSConnection(vip, 443, timeout=10, context=ssl.create_default_context(cafile=ca))
c.request("GET", path, headers={"Host": domain})
r = c.getresponse()
headers = {}
for k, v in r.getheaders():
    headers.setdefault(k.lower(), []).append(v)
print(json.dumps({"status": r.status, "headers": headers, "body": r.read().decode(errors="replace")}))
"""

READY_PROBE = r"""
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


class HeadersLab(Lab):
    """agent_netns's lab (namespaces, processes, cleanup) under this test's own namespace names."""

    def ns(self, host: str) -> str:
        return f"{PREFIX}{host}"

    def open(self) -> None:
        self._add_ns(SWITCH)
        sh("ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", SWITCH, "addr", "add", f"{self.gateway}/{self.prefix}", "dev", "br0")
        sh("ip", "-n", SWITCH, "link", "set", "br0", "up")

    def host(self, name: str, address: str) -> str:
        ns = self.ns(name)
        self._add_ns(ns)
        port = f"p-{name}"[:15]
        sh("ip", "-n", SWITCH, "link", "add", port, "type", "veth", "peer", "name", "kiln0", "netns", ns)
        sh("ip", "-n", SWITCH, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/{self.prefix}", "dev", "kiln0")
        sh("ip", "-n", ns, "link", "set", "kiln0", "up")
        return ns

    def stop(self, name: str) -> None:
        """Stop one daemon (its whole process group: nginx's workers too), bounded."""
        [process] = [p for n, p in self.processes if n == name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-1500:]}" for name, _ in self.processes)


@dataclass
class WebTier:
    lab: HeadersLab
    ca: Path
    vip: str
    domain: str

    def request(self, scheme: str, path: str) -> subprocess.CompletedProcess[str]:
        """A GET from the gateway address (outside every tier) to the VIP, pinning the cluster CA."""
        argv = (sys.executable, "-c", CLIENT, str(self.ca), self.vip, self.domain, scheme, path)
        return self.lab.exec(SWITCH, *argv, timeout=20)

    def get(self, scheme: str, path: str) -> dict[str, Any]:
        result = self.request(scheme, path)
        assert result.returncode == 0, result.stderr + self.lab.logs()
        return json.loads(result.stdout)

    def wait_for(self, scheme: str, path: str, status: int, body: str = "") -> dict[str, Any]:
        """The first answer with this status and body text, within WAIT seconds (HAProxy may not listen yet)."""
        deadline = time.monotonic() + WAIT
        while True:
            result = self.request(scheme, path)
            response = json.loads(result.stdout) if result.returncode == 0 else None
            if response and response["status"] == status and body in response["body"]:
                return response
            last = response or result.stderr[-300:]
            assert time.monotonic() < deadline, f"no {status} for {path} in {WAIT} s: {last}\n" + self.lab.logs()
            time.sleep(0.3)


def start_nginx(the_lab: HeadersLab, host: str, tree: Path, run: Path, cache: Path, static_root: Path) -> None:
    """nginx with the host's rendered configs, its paths moved beside the tree and its static root to `static_root`."""
    site = file_of(tree, "/etc/nginx/conf.d/kiln-site.conf")
    text = site.read_text()
    [line] = [x for x in text.splitlines() if x.strip().startswith("root ")]
    site.write_text(text.replace(line, f"    root {static_root};"))
    conf = relocate_nginx(tree, run, cache)
    the_lab.start(f"{host}-nginx", the_lab.ns(host), ["nginx", "-c", str(conf), "-g", "daemon off;"])


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory, cluster: Cluster, secret_store: SecretStore) -> Iterator[WebTier]:
    base = tmp_path_factory.mktemp("kiln-hdr")
    bundles = applied_bundles(cluster, secret_store)
    hosts = {h.name: h for h in cluster.hosts}
    shared = Path(tempfile.mkdtemp(prefix="kiln-hdr-nginx-"))  # pytest's temp dirs are 0700: www-data cannot enter
    shared.chmod(0o711)
    static = shared / "www"
    (static / "static").mkdir(parents=True)
    (static / "static" / "site.css").write_text("body { margin: 0 }\n")
    for path in (static, static / "static"):
        path.chmod(0o755)
    (static / "static" / "site.css").chmod(0o644)
    the_lab = HeadersLab(base, str(cluster.network.gateway), cluster.network.subnet.prefixlen)
    try:
        the_lab.open()
        for name in ("app1", "web1", "web2", "lb1"):
            the_lab.host(name, str(hosts[name].ip))
        stand_in = [sys.executable, "-c", STAND_IN_APP, str(hosts["app1"].ip), str(app.settings_of(cluster).port)]
        the_lab.start("app1-stand-in", the_lab.ns("app1"), stand_in)
        for name in ("web1", "web2"):
            tree = lay_out(bundles[name], base / "trees" / name)
            run = base / f"{name}-run"
            run.mkdir()
            start_nginx(the_lab, name, tree, run, shared / f"{name}-cache", static)
        vip = bundles["lb1"].network.vip
        sh("ip", "-n", the_lab.ns("lb1"), "addr", "add", f"{vip}/{cluster.network.subnet.prefixlen}", "dev", "kiln0")
        tree = lay_out(bundles["lb1"], base / "trees" / "lb1")
        run = base / "lb1-run"
        run.mkdir()
        the_lab.start("lb1-haproxy", the_lab.ns("lb1"), ["haproxy", "-db", "-f", str(relocate_haproxy(tree, run))])
        t = WebTier(the_lab, secret_store.ca_pem, vip, cluster.domain)
        t.wait_for("https", web.HEALTH_PATH, 200)
        t.wait_for("https", "/health", 200)  # through nginx to the stand-in app
        yield t
    finally:
        the_lab.close()
        shutil.rmtree(shared, ignore_errors=True)


def assert_secured(response: dict[str, Any], *, https: bool = True) -> None:
    headers = response["headers"]
    for name in SECURITY:
        assert len(headers.get(name, [])) == 1, f"{name}: {headers.get(name)} in {response}"
    if https:
        assert headers.get(HSTS, [""])[0].startswith("max-age="), response
    else:
        assert HSTS not in headers, "HSTS over plain HTTP: browsers ignore it (RFC 6797)"


def test_an_app_page_carries_the_security_headers_and_the_cache_status(tier: WebTier) -> None:
    page = tier.get("https", "/")
    assert page["status"] == 200 and "stand-in app" in page["body"], page
    assert_secured(page)
    assert page["headers"]["x-cache-status"] in (["MISS"], ["BYPASS"], ["EXPIRED"]), page


def test_a_static_file_carries_the_security_headers_and_stays_cacheable(tier: WebTier) -> None:
    css = tier.get("https", "/static/site.css")
    assert css["status"] == 200 and css["body"] == "body { margin: 0 }\n", css
    assert_secured(css)
    assert css["headers"]["cache-control"] == ["max-age=604800"] and "expires" in css["headers"], css
    assert "x-cache-status" not in css["headers"], "no cache lookup for a file nginx serves itself"


def test_a_missing_static_file_is_nginx_404_with_the_security_headers(tier: WebTier) -> None:
    not_found = tier.get("https", "/static/no-such.css")
    assert not_found["status"] == 404 and not_found["headers"]["server"] == ["nginx"], not_found
    assert_secured(not_found)


@pytest.mark.parametrize("path", [web.HEALTH_PATH, "/health"])
def test_the_health_endpoints_carry_the_security_headers(tier: WebTier, path: str) -> None:
    health = tier.get("https", path)
    assert health["status"] == 200 and health["body"] == "ok\n", health
    assert_secured(health)


def test_the_redirect_to_https_carries_the_security_headers(tier: WebTier) -> None:
    redirect = tier.get("http", "/some/page")
    assert redirect["status"] == 301, redirect
    assert redirect["headers"]["location"] == [f"https://{tier.domain}/some/page"]
    assert_secured(redirect, https=False)


def test_with_the_app_down_nginx_502_carries_the_security_headers(tier: WebTier) -> None:
    tier.lab.stop("app1-stand-in")
    down = tier.get("https", "/while-the-app-is-down")
    assert down["status"] in (502, 504) and down["headers"]["server"] == ["nginx"], down
    assert_secured(down)


def test_with_no_nginx_up_haproxy_503_carries_the_security_headers(tier: WebTier) -> None:
    tier.lab.stop("web1-nginx")
    tier.lab.stop("web2-nginx")
    # no web server up: HAProxy's checks have marked both DOWN (fall 3, fastinter 1 s), its readiness URI says so
    probe = (sys.executable, "-c", READY_PROBE, f"http://127.0.0.1:{lb.READY_PORT}/ready")
    deadline = time.monotonic() + WAIT
    while tier.lab.exec(tier.lab.ns("lb1"), *probe, timeout=10).stdout.strip() != "503":
        assert time.monotonic() < deadline, f"web servers not DOWN in {WAIT} s\n" + tier.lab.logs()
        time.sleep(0.5)
    unavailable = tier.get("https", "/")
    assert unavailable["status"] == 503 and "No server is available" in unavailable["body"], unavailable
    assert "server" not in unavailable["headers"], unavailable
    assert_secured(unavailable)
