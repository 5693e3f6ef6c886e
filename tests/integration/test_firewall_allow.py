"""roles.yaml hosts[].network.allow in the real nftables: web1's rendered ruleset (nftables.conf and the tier sets it
includes) loaded by `nft` in web1's network namespace, with real TCP connections and UDP exchanges in and out.

web1 has its cluster address and an added one on kiln0 (a namespace's veth: this kernel has no 8021q, and the
firewall matches addresses, not interfaces). Its rules: in, tcp 2049 and udp 514 from 10.20.0.0/25; out, tcp 9000
and udp 1812 to 10.20.0.5. A UDP exchange is a datagram to the port and one back from the address it was sent to
(the reply crosses the firewall as conntrack's established). Every exchange is first tried with no ruleset, so a
drop below is the firewall's, not the harness's. The tries run side by side: a drop waits out its whole timeout.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
        - {direction: in, proto: udp, ports: [514], peers: [10.20.0.0/25]}
        - {direction: out, proto: udp, ports: [1812], peers: [10.20.0.5/32]}
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
# a UDP responder on each address:port given, answering every datagram with "ok" from that address
RESPONDER = """
import socket, sys, threading
def serve(address, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((address, port))
    while True:
        _, peer = s.recvfrom(64); s.sendto(b"ok", peer)
for given in sys.argv[1:]:
    address, port = given.split(":")
    threading.Thread(target=serve, args=(address, int(port)), daemon=True).start()
threading.Event().wait(600)
"""
# one datagram to argv[1]:argv[2], then prints the reply; connected, so a reply from elsewhere is not taken
ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(float(sys.argv[3]))
s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b"hi")
try:
    print(s.recv(64).decode(), end="")
except OSError:  # no answer, or an ICMP unreachable
    pass
"""
TIMEOUT = 1.5  # seconds an exchange waits for its answer: every drop waits it out


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
        udp = {
            "web1": (f"{ADDED}:514", f"{ADDED}:515", f"{WEB1}:514"),
            "peer": (f"{PEER}:1812", f"{PEER}:1813"),
            "stranger": (f"{STRANGER}:1812",),
        }
        for name, bound in udp.items():
            the_lab.start(f"respond-{name}", the_lab.ns(name), [sys.executable, "-c", RESPONDER, *bound])
        yield the_lab


def answers(lab: agent_netns.Lab, source: str, address: str, proto: str, port: int) -> bool:
    """Whether a TCP connection, or a UDP datagram, from `source`'s namespace to address:port is answered "ok"
    within TIMEOUT (a drop: no answer)."""
    if proto == "tcp":
        script = f"exec 3<>/dev/tcp/{address}/{port} && head -c 2 <&3"
        argv = ["timeout", str(TIMEOUT), "bash", "-c", script]
    else:
        argv = [sys.executable, "-c", ASK, address, str(port), str(TIMEOUT)]
    return lab.exec(lab.ns(source), *argv, timeout=10).stdout == "ok"


def all_answers(lab: agent_netns.Lab) -> dict[tuple[str, str, str, int], bool]:
    """Every exchange of CONNECTIONS tried at once (drops wait their timeout side by side, not one after another)."""
    with ThreadPoolExecutor(len(CONNECTIONS)) as pool:
        return dict(zip(CONNECTIONS, pool.map(lambda c: answers(lab, *c), CONNECTIONS), strict=True))


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
    # (from, to address, protocol, port): answered once web1's ruleset is loaded
    ("peer", ADDED, "tcp", 2049): True,  # in: an allowed peer, port and address
    ("peer", ADDED, "tcp", 2050): False,  # a port not allowed
    ("peer", WEB1, "tcp", 2049): False,  # never to `ip`: the tier matrix is kiln's
    ("stranger", ADDED, "tcp", 2049): False,  # a peer outside the allowed /25
    ("web1", PEER, "tcp", 9000): True,  # out: the allowed peer and port
    ("web1", PEER, "tcp", 9001): False,
    ("web1", STRANGER, "tcp", 9000): False,
    ("peer", ADDED, "udp", 514): True,  # in: the datagram in, and the reply out as established
    ("peer", ADDED, "udp", 515): False,
    ("peer", WEB1, "udp", 514): False,
    ("stranger", ADDED, "udp", 514): False,
    ("web1", PEER, "udp", 1812): True,  # out: the datagram out, and the reply in as established
    ("web1", PEER, "udp", 1813): False,
    ("web1", STRANGER, "udp", 1812): False,
}


def test_allow_opens_the_declared_ports_to_the_declared_peers_and_nothing_else(
    lab: agent_netns.Lab, cluster: Cluster, tmp_path: Path
) -> None:
    for _ in range(10):  # the listeners and responders start
        if all((got := all_answers(lab)).values()):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"with no ruleset: {got}")
    ruleset = load_ruleset(lab, cluster, tmp_path / "etc")
    assert "tcp dport 2049 ip saddr 10.20.0.0/25 ip daddr 10.20.0.21 ct state new accept" in ruleset
    assert "tcp dport 9000 ip daddr 10.20.0.5/32 accept" in ruleset
    assert "udp dport 514 ip saddr 10.20.0.0/25 ip daddr 10.20.0.21 accept" in ruleset
    assert "udp dport 1812 ip daddr 10.20.0.5/32 accept" in ruleset
    assert all_answers(lab) == CONNECTIONS
