"""`firstboot converge` against the real provisioning server: a host provisioned by `firstboot run` (into a fake
machine root, as tests/integration/test_agent_server.py does) follows the generations the operator publishes
(POST /v1/publish, what `./inv apply` sends).

The operator grows the cluster (web3) and changes a setting; web1's converge changes exactly the files that
differ for it, runs its real checkers (nft, nginx) against the tree, tells the server it runs the new
generation, and asks again for nothing (204). A config its checker refuses cannot be published (the server
checks first), so that case goes through the converge policy in this process, fed the host's own bundle with a
broken nginx.conf, and reports to the real server: the old files stay and the server hears nginx's words.
A host the operator drops from roles.yaml is retired: its poll is refused (403) and its converge stops for good.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from firstboot import agent
from firstboot.backoff import Backoff
from firstboot.converge import STEPS, ConvergePolicy, Record
from firstboot.credential import Credential
from firstboot.paths import Paths
from firstboot.report import EventQueue, Reporter
from firstboot.state import ConvergeState
from firstboot.steps.fetch import Fetched, download_shared, with_shared
from kiln.bundle import Bundle
from tests.integration.kiln_server import RunningServer, running_server
from tests.integration.test_agent_server import armed_seed, firstboot, host_key, host_view, machine, run, signed_get

pytestmark = pytest.mark.integration

WEB3 = '  - {name: web3, role: web, mac: "52:54:00:10:00:23", ip: 10.10.0.23}\n'
NGINX_CONF = "/etc/nginx/nginx.conf"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("kiln-converge-serve")) as s:
        yield s


def publish(server: RunningServer, text: str) -> int:
    """What `./inv apply` sends once its checks passed: the next generation, served at once."""
    with server.client() as c:
        answer = c.post(f"{server.tls_url}/v1/publish", json={"roles": text})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["generation"])


def provisioned(server: RunningServer, root: Path, host: str) -> int:
    """`firstboot run` into `root` as `host`; the generation it left for converge."""
    result = run(machine(root, server, armed_seed(server, host)))
    assert result.returncode == 0, result.stderr
    return ConvergeState.load(Paths(root).converge_state).generation


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Each file of the machine's /etc: its inode and modification time (a rewrite changes one of them)."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (root / "etc").rglob("*")
        if p.is_file()
    }


def converge_timeline(server: RunningServer, host: str) -> list[tuple[str, str]]:
    return [(e["status"], e["detail"]) for e in host_view(server, host)["timeline"] if e["step"] == "converge"]


def test_a_host_follows_a_published_generation_changing_only_what_changed(
    server: RunningServer, tmp_path: Path
) -> None:
    root = tmp_path / "web1"
    runs = provisioned(server, root, "web1")
    before = files_under(root)
    text = server.roles.read_text()
    grown = text.replace("  - {name: app1", WEB3 + "  - {name: app1", 1).replace("roundrobin", "leastconn")
    generation = publish(server, grown)
    assert generation == runs + 1

    result = firstboot("converge", "--root", str(root), "--once")
    assert result.returncode == 0, result.stderr
    after = files_under(root)
    assert {p for p in after if after[p] != before.get(p)} == {"etc/hosts", "etc/nftables.d/kiln-tiers.nft"}
    assert (
        "web3" in (root / "etc/hosts").read_text()
        and "10.10.0.23" in (root / "etc/nftables.d/kiln-tiers.nft").read_text()
    )
    assert (
        "3 configs passed their checkers: /etc/nftables.conf, /etc/sudoers.d/60-kiln-admin, /etc/nginx/nginx.conf"
        in result.stderr
    )
    assert "converge join     not rerun" in result.stderr
    view = host_view(server, "web1")
    assert (view["generation"], view["converged"], view["state"]) == (generation, True, "joined")
    assert [s for s, _ in converge_timeline(server, "web1")] == ["start", "ok"]
    ok = converge_timeline(server, "web1")[-1][1]
    assert ok.startswith(f"generation {generation} applied: 2 files changed")
    assert ConvergeState.load(Paths(root).converge_state).generation == generation

    again = firstboot("converge", "--root", str(root), "--once", "-v")
    assert again.returncode == 0, again.stderr
    assert f"nothing newer than generation {generation} (Retry-After 10)" in again.stderr
    assert files_under(root) == after and len(converge_timeline(server, "web1")) == 2


def served_bundle(server: RunningServer, root: Path, host: str) -> Bundle:
    """The host's bundle as the server serves it now (signed GET with its key), its shared contents inline."""
    answer = signed_get(server, host_key(root), host, "/v1/bundle")
    assert answer.status_code == 200, answer.text
    bundle = Bundle.from_json(answer.content)
    paths = Paths(root)
    credential = Credential(paths, host=host, enrolled=True)
    digests = bundle.shared_digests()
    contents = download_shared(paths, server.tls_url, digests, paths.ca_pem, Backoff(deadline=20), credential)
    return with_shared(bundle, contents)


def test_a_config_nginx_refuses_leaves_the_old_files_and_the_server_hears_why(
    server: RunningServer, tmp_path: Path
) -> None:
    root = tmp_path / "web2"
    runs = provisioned(server, root, "web2")
    current = served_bundle(server, root, "web2")
    broken = replace(
        current,
        generation=runs + 1,
        files=tuple(
            replace(f, content=f.content + "\nthis_is_not_nginx on;\n")
            if f.path == NGINX_CONF
            else replace(f, content=f.content + "10.10.0.99 extra.example\n")
            if f.path == "/etc/hosts"
            else f
            for f in current.files
        ),
    )
    before = {p: (root / p.lstrip("/")).read_bytes() for p in (NGINX_CONF, "/etc/hosts")}
    paths = Paths(root)
    reporter = Reporter(EventQueue(paths.events), Credential(paths, host="web2", enrolled=True))
    reporter.target(server.tls_url, "web2", server.tls_context())
    reporter.start()
    try:
        policy = ConvergePolicy(paths, lambda: Fetched("broken on purpose", bundle=broken), Record(paths, reporter))
        assert agent.execute(policy, STEPS) == 1
    finally:
        assert reporter.close() == 0  # the events reached the server
    assert {p: (root / p.lstrip("/")).read_bytes() for p in before} == before
    status, detail = converge_timeline(server, "web2")[-1]
    assert status == "fail"
    assert f"check: {NGINX_CONF}: `nginx -t -q -c {NGINX_CONF}` refused it" in detail
    assert 'unknown directive "this_is_not_nginx"' in detail  # nginx's own words
    assert "2 of 2 changed files put back; no service was touched" in detail
    assert host_view(server, "web2")["state"] == "joined"  # the previous generation keeps running
    state = json.loads((root / "var/lib/firstboot/converge.json").read_text())
    assert state["generation"] == runs and "this_is_not_nginx" in state["last_error"]
    text = firstboot("status", "--root", str(root)).stdout
    assert f"converge: runs generation {runs}" in text and "last error:" in text


def test_a_host_the_operator_removes_is_retired_and_its_converge_stops_for_good(
    server: RunningServer, tmp_path: Path
) -> None:
    root = tmp_path / "db2"
    provisioned(server, root, "db2")
    with server.client() as c:
        text = c.get(f"{server.tls_url}/v1/published").json()["roles"]
    assert "name: db2," in text
    publish(server, "".join(line for line in text.splitlines(keepends=True) if "name: db2," not in line))
    result = firstboot("converge", "--root", str(root), "--once")
    assert result.returncode == 0, result.stderr
    assert "HTTP 403" in result.stderr and "the host is retired" in result.stderr
    assert (root / "var/lib/firstboot/retired").exists()
    again = firstboot("converge", "--root", str(root))  # what the unit would run: it ends at once
    assert again.returncode == 0 and "this host is retired" in again.stdout
    assert "RETIRED" in firstboot("status", "--root", str(root)).stdout
