"""Day 2 on a real server: `./inv plan`, `./inv apply` and `./inv hosts` against `./inv serve`, with hosts that
enrol, join and follow generations as the agent does (signed requests), and no restart of the server.

Scale out (a web host added, a setting changed), a bad file (nothing changes), scale in (two generations: drained,
then retired and revoked), and a restart that keeps what apply published.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.bundle import Bundle
from tests.integration.kiln_server import HostClient, RunningServer, running_server

pytestmark = pytest.mark.integration

WEB3 = '  - {name: web3, role: web, mac: "52:54:00:10:00:23", ip: 10.10.0.23}\n'


def _hosts(server: RunningServer) -> dict:
    with server.client() as c:
        answer = c.get(f"{server.tls_url}/v1/hosts?timeline=0")
    assert answer.status_code == 200, answer.text
    return answer.json()


def _entry(server: RunningServer, name: str) -> dict:
    [entry] = [h for h in _hosts(server)["hosts"] if h["name"] == name]
    return entry


def _inv(server: RunningServer, task: str, roles: Path, *args: str):
    return server.inv(
        task, "--roles", str(roles), "--server", server.tls_url, "--secrets", str(server.secrets.root), *args
    )


def _joined(server: RunningServer, name: str, mac: str) -> HostClient:
    """A host that enrolled and finished its first boot (as the agent reports it)."""
    host = server.host(name, mac)
    assert host.enrol().status_code == 200
    for step in ("secrets", "done"):
        assert host.event(step, "ok").status_code == 201
    assert _entry(server, name)["state"] == "joined"
    return host


def _poll(host: HostClient, generation: int):
    return host.signed("GET", f"/v1/bundle?after={generation}")


class Follower:
    """What `firstboot converge` does, for one host, in a thread: poll with ?after=, report converge ok."""

    def __init__(self, host: HostClient, generation: int) -> None:
        self.host = host
        self.generation = generation
        self.stop = threading.Event()
        self.bundles: list[Bundle] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for _ in range(600):  # bounded: 600 polls of 0.2 s
            if self.stop.wait(0.2):
                return
            answer = _poll(self.host, self.generation)
            if answer.status_code == 200:
                bundle = Bundle.from_json(answer.content)
                self.bundles.append(bundle)
                self.generation = bundle.generation
                body = json.dumps({"step": "converge", "status": "ok", "generation": bundle.generation}).encode()
                self.host.signed(
                    "POST", f"/v1/hosts/{self.host.name}/events", body, **{"Content-Type": "application/json"}
                )

    def __enter__(self) -> Follower:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(tmp_path / "server") as s:
        yield s


def test_scale_out_then_in_without_a_restart(server: RunningServer, tmp_path: Path) -> None:
    roles = server.roles
    original = roles.read_text()
    lb1 = _joined(server, "lb1", "52:54:00:10:00:11")
    first = _hosts(server)["generation"]

    # a joined host's poll: nothing newer, when to ask again, and the generation it runs is recorded
    nothing = _poll(lb1, first)
    assert nothing.status_code == 204 and nothing.headers["Retry-After"] == "10"
    entry = _entry(server, "lb1")
    assert entry["generation"] == first and entry["converged"]

    unchanged = _inv(server, "plan", roles, "--no-check")
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.stdout.strip().endswith("no changes")

    # scale out and a changed setting: the plan shows it, apply publishes it
    changed = original.replace("balance: roundrobin", "balance: leastconn")
    assert changed != original
    changed = changed.replace("  - {name: app1", WEB3 + "  - {name: app1", 1)
    roles.write_text(changed)
    plan = _inv(server, "plan", roles)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "+ web3 (web, 10.10.0.23)" in plan.stdout
    assert re.search(r"^~ lb1 \(lb, ", plan.stdout, re.M)
    assert "-    balance roundrobin" in plan.stdout and "+    balance leastconn" in plan.stdout
    assert "service:  haproxy.service reload-or-restart" in plan.stdout
    assert "went through their daemons' checkers: passed" in plan.stdout
    assert "keepalived.service" not in plan.stdout, "keepalived's config did not change: it is not reloaded"

    applied = _inv(server, "apply", roles, "--no-wait", "--no-check")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    view = _hosts(server)
    assert view["generation"] == first + 1
    assert _entry(server, "web3")["state"] == "waiting"
    assert not _entry(server, "lb1")["converged"]
    with server.client() as c:
        seed = c.get(f"{server.tls_url}/v1/hosts/web3/seed")
    assert seed.status_code == 200, "the new host can be provisioned at once"

    newer = _poll(lb1, first)
    assert newer.status_code == 200
    bundle = Bundle.from_json(newer.content)
    assert bundle.generation == first + 1 and "web3" in "".join(f.content for f in bundle.files) + str(bundle)
    assert bundle.secrets_withheld and all(s.value is None for s in bundle.secrets), "a poll never carries secrets"
    assert not any(a["kind"] == "secrets-twice" for a in _entry(server, "lb1")["alerts"])
    event = json.dumps({"step": "converge", "status": "ok", "generation": first + 1}).encode()
    lb1.signed("POST", "/v1/hosts/lb1/events", event, **{"Content-Type": "application/json"})
    entry = _entry(server, "lb1")
    assert entry["generation"] == first + 1 and entry["converged"] and entry["state"] == "joined"

    hosts = _inv(server, "hosts", roles)
    assert hosts.returncode == 0, hosts.stdout + hosts.stderr
    assert f"generation {first + 1}: 1/1 running hosts converged" in hosts.stdout

    # a bad file changes nothing
    roles.write_text(changed.replace("balance: leastconn", "balance: fastest"))
    bad = _inv(server, "apply", roles, "--no-wait")
    assert bad.returncode == 1 and "balance" in bad.stderr and "nothing was published" in bad.stderr
    assert _hosts(server)["generation"] == first + 1

    # scale in: web2 drained (one generation), then retired and revoked (the next); the host follows both
    web2 = _joined(server, "web2", "52:54:00:10:00:22")
    smaller = "".join(line for line in changed.splitlines(keepends=True) if "name: web2," not in line)
    roles.write_text(smaller)
    with Follower(lb1, first + 1) as follower:
        removed = _inv(server, "apply", roles, "--timeout", "60", "--no-check")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert f"generation {first + 2}: draining web2" in removed.stdout
    drained, final = follower.bundles[0], follower.bundles[-1]
    assert drained.generation == first + 2 and final.generation == first + 3
    view = _hosts(server)
    assert view["generation"] == first + 3 and "web2" not in [h["name"] for h in view["hosts"]]
    assert [r["name"] for r in view["retired"]] == ["web2"] and view["retired"][0]["was"].startswith("web 10.10.0.22")
    assert web2.bundle().status_code == 403, "a retired host's key is revoked"
    assert "retired" in _inv(server, "hosts", roles).stdout


def test_publish_is_the_operators_and_checks_what_it_is_given(server: RunningServer) -> None:
    body = {"roles": server.roles.read_text()}
    with server.client(operator=False) as c:
        assert c.post(f"{server.tls_url}/v1/publish", json=body).status_code == 401
        assert c.get(f"{server.tls_url}/v1/published").status_code == 401
    with server.client() as c:
        same = c.post(f"{server.tls_url}/v1/publish", json=body)
        assert same.status_code == 200 and same.json()["changed"] is False
        still = c.post(f"{server.tls_url}/v1/publish", json={**body, "retiring": ["web1"]})
        assert still.status_code == 422 and "web1: roles.yaml still lists it" in still.json()["problems"][0]
        stranger = c.post(f"{server.tls_url}/v1/publish", json={**body, "retiring": ["web9"]})
        assert stranger.status_code == 422 and "no such host was published" in stranger.json()["problems"][0]
        broken = c.post(f"{server.tls_url}/v1/publish", json={"roles": "cluster: ["})
        assert broken.status_code == 422
        assert c.get(f"{server.tls_url}/v1/published").json()["generation"] == same.json()["generation"]


def test_a_restart_serves_what_apply_published(tmp_path: Path) -> None:
    base = tmp_path / "server"
    with running_server(base) as s:
        text = s.roles.read_text()
        grown = tmp_path / "grown.yaml"
        grown.write_text(text.replace("  - {name: app1", WEB3 + "  - {name: app1", 1))
        assert _inv(s, "apply", grown, "--no-wait", "--no-check").returncode == 0
        generation = _hosts(s)["generation"]
    with running_server(base, roles=s.roles) as again:  # the same, unchanged --roles file
        assert "serving generation" in again.output()
        view = _hosts(again)
        assert view["generation"] == generation and "web3" in [h["name"] for h in view["hosts"]]
    s.roles.write_text(text.replace("workers: 2", "workers: 4"))  # the file edited since: it wins
    with running_server(base, roles=s.roles) as edited:
        view = _hosts(edited)
        assert view["generation"] == generation + 1 and "web3" not in [h["name"] for h in view["hosts"]]
        assert [r["name"] for r in view["retired"]] == ["web3"]
