"""roles.yaml hosts[].network.allow in the real nftables: web1's rendered ruleset (nftables.conf and the tier sets it
includes) loaded by `nft` in web1's network namespace, with real TCP connections in and out.

web1 has its cluster address and an added one on kiln0 (a namespace's veth: this kernel has no 8021q, and the
firewall matches addresses, not interfaces). Its rules: in, tcp 2049 from 10.20.0.0/25; out, tcp 9000 to
10.20.0.5. Every connection is first tried with no ruleset, so a drop below is the firewall's, not the harness's.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.model import Cluster, parse_roles
from kiln.render import render
from kiln.roles import common
from tests.integration import agent_netns

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft"),
]

HOST = """  - name: web1
    role: web
    mac: "52:54:00:10:00:21"
    ip: 10.10.0.21
    network:
      addresses: [10.20.0.21/24]
      allow:
        - {direction: in, proto: tcp, ports: [2049], peers: [10.20.0.0/25]}
        - {direction: out, proto: tcp, ports: [9000], peers: [10.20.0.5/32]}
"""
WEB1, ADDED = "10.10.0.21", "10.20.0.21"
PEER, STRANGER = "10.20.0.5", "10.20.0.200"  # in the allowed /25, and outside it
# a TCP listener on each port given, answering every connection with "ok"
LISTENER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port)); s.listen()
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
for port in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(port),), daemon=True).start()
threading.Event().wait(600)
"""


@pytest.fixture(scope="module")
def cluster(shipped_roles: Path) -> Cluster:
    lines = shipped_roles.read_text().splitlines(keepends=True)
    return parse_roles("".join(HOST if "name: web1," in line else line for line in lines))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[agent_netns.Lab]:
    with agent_netns.lab(tmp_path, "10.10.0.1", 24, names="kiln-fwa-") as the_lab:
        the_lab.host("web1", WEB1)
        agent_netns.sh("ip", "-n", the_lab.ns("web1"), "addr", "add", f"{ADDED}/24", "dev", "kiln0")
        for name, address in (("peer", PEER), ("stranger", STRANGER)):
            the_lab.host(name, address)  # and web1's cluster address on the same wire, from this address
            agent_netns.sh("ip", "-n", the_lab.ns(name), "route", "add", f"{WEB1}/32", "dev", "kiln0", "src", address)
        for name, ports in (("web1", ("2049", "2050")), ("peer", ("9000", "9001")), ("stranger", ("9000",))):
            the_lab.start(f"listen-{name}", the_lab.ns(name), [sys.executable, "-c", LISTENER, *ports])
        yield the_lab


def answers(lab: agent_netns.Lab, source: str, address: str, port: int) -> bool:
    """Whether a connection from `source`'s namespace to address:port is answered within 2 s (a drop: no answer)."""
    script = f"exec 3<>/dev/tcp/{address}/{port} && head -c 2 <&3"
    return lab.exec(lab.ns(source), "timeout", "2", "bash", "-c", script, timeout=10).stdout == "ok"


def load_ruleset(lab: agent_netns.Lab, cluster: Cluster, etc: Path) -> str:
    """web1's nftables.conf and the tier sets it includes, written under `etc` and loaded by nft in its namespace;
    returns the ruleset."""
    rendered = render(cluster)
    for name in ("/etc/nftables.conf", common.TIER_SETS):
        path = etc / Path(name).relative_to("/etc")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered.content(rendered.bundles["web1"], name))
    done = lab.exec(lab.ns("web1"), "nft", "-I", str(etc), "-f", str(etc / "nftables.conf"))
    assert done.returncode == 0, done.stderr
    return (etc / "nftables.conf").read_text()


CONNECTIONS = {
    # (from, to address, port): answered once web1's ruleset is loaded
    ("peer", ADDED, 2049): True,  # in: an allowed peer, port and address
    ("peer", ADDED, 2050): False,  # a port not allowed
    ("peer", WEB1, 2049): False,  # never to `ip`: the tier matrix is kiln's
    ("stranger", ADDED, 2049): False,  # a peer outside the allowed /25
    ("web1", PEER, 9000): True,  # out: the allowed peer and port
    ("web1", PEER, 9001): False,
    ("web1", STRANGER, 9000): False,
}


def test_allow_opens_the_declared_ports_to_the_declared_peers_and_nothing_else(
    lab: agent_netns.Lab, cluster: Cluster, tmp_path: Path
) -> None:
    for _ in range(20):  # the listeners start
        if all(answers(lab, *c) for c in CONNECTIONS):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"with no ruleset: { {c: answers(lab, *c) for c in CONNECTIONS} }")
    ruleset = load_ruleset(lab, cluster, tmp_path / "etc")
    assert "tcp dport 2049 ip saddr 10.20.0.0/25 ip daddr 10.20.0.21 ct state new accept" in ruleset
    assert "tcp dport 9000 ip daddr 10.20.0.5/32 accept" in ruleset
    assert {c: answers(lab, *c) for c in CONNECTIONS} == CONNECTIONS
