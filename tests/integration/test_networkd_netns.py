"""The real systemd-networkd (and udev's .link parser) against the files kiln renders for hosts[].network.

Each run is a private network and mount namespace: a veth named kiln0 (the NIC the rendered .link would name),
sysfs mounted read-only (networkd then configures links without waiting for udev, as in a container), a tmpfs
on /run for networkd's state, the rendered directory bound over /etc/systemd/network. networkd runs as it does
on a host, in the foreground, logging to the console; `ip -j` reads what it configured.

What this machine's kernel allows: addresses, routes and MTU on a veth. It has no bond and no 8021q driver
("Unknown device type"), so bonds and VLANs are proven here only as far as networkd parsing and loading every
rendered file without a complaint; tests/e2e/test_image_network.py creates them in a VM (the role image's kernel
has both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kiln.model import Cluster, parse_roles
from kiln.render import Renderer

pytestmark = pytest.mark.integration
NETWORKD = "/lib/systemd/systemd-networkd"
WAIT_ONLINE = "/lib/systemd/systemd-networkd-wait-online"
# networkd's and udev's parsers report each line they refuse or ignore as PATH:LINE: what is wrong
COMPLAINT = re.compile(r"^/etc/systemd/network/\S+:\d+: .*$", re.M)

if os.geteuid() != 0 or not Path(NETWORKD).exists() or not shutil.which("unshare"):
    pytest.skip("needs root, unshare and systemd-networkd (systemd 252)", allow_module_level=True)

# mounts, the NIC, networkd in the background; then what the test waits for; then `ip -j` into OUT
_SCRIPT = r"""
set -e
conf=$1 out=$2 mac=$3 wait=$4
mount -t sysfs -o ro sysfs /sys
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/netif
chown systemd-network:systemd-network /run/systemd/netif
mount --bind "$conf" /etc/systemd/network
ip link add kiln0 address "$mac" type veth peer name kiln0-p
ip link set kiln0-p up
SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_COLOR=no "$NETWORKD" > "$out/networkd.log" 2>&1 &
pid=$!
if [ "$wait" = online ]; then
    "$WAIT_ONLINE" --interface=kiln0 --timeout=15 > "$out/wait.log" 2>&1 ||
        echo "wait-online failed: $?" >> "$out/wait.log"
else
    i=0; until grep -q "Enumeration completed" "$out/networkd.log" || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
    sleep 0.5
    udevadm test-builtin net_setup_link /sys/class/net/kiln0 > "$out/udev.log" 2>&1 || true
fi
ip -j addr show dev kiln0 > "$out/addr.json"
ip -j route show > "$out/route.json"
kill $pid; wait $pid || true
"""

HOSTS = {
    # addresses, routes and MTU: all that a veth can show
    "app1": """  - {name: app1, role: app, mac: "52:54:00:10:00:31", ip: 10.10.0.31,
     network: {mtu: 9000, addresses: [10.0.0.31/24, 10.1.0.31/16],
               routes: [{to: 10.50.0.0/16, via: 10.0.0.1}, {to: 10.70.0.0/16, via: 10.10.0.254}]}}
""",
    # a bond of two NICs with VLANs, addresses and routes on it: parsed and loaded only
    "web1": """  - name: web1
    role: web
    mac: "52:54:00:10:00:21"
    ip: 10.10.0.21
    network:
      mtu: 9000
      bond: {mode: 802.3ad, members: ["52:54:00:10:00:21", "52:54:00:10:01:21"], lacp_rate: fast}
      addresses: [10.0.0.21/24]
      vlans: [{id: 20, addresses: [10.20.0.21/24], mtu: 1500}, {id: 30, addresses: [10.30.0.21/24]}]
      routes: [{to: 10.50.0.0/16, via: 10.0.0.1}, {to: 10.60.0.0/16, via: 10.20.0.1}]
""",
    "web2": """  - name: web2
    role: web
    mac: "52:54:00:10:00:22"
    ip: 10.10.0.22
    network:
      bond: {mode: active-backup, members: ["52:54:00:10:01:22", "52:54:00:10:00:22"], primary: "52:54:00:10:00:22"}
""",
}


@pytest.fixture(scope="module")
def cluster_with_networks(shipped_roles: Path) -> Cluster:
    lines = shipped_roles.read_text().splitlines(keepends=True)
    return parse_roles("".join(next((v for k, v in HOSTS.items() if f"name: {k}," in ln), ln) for ln in lines))


def rendered(cluster: Cluster, host: str, into: Path) -> Path:
    """The host's networkd files, as its bundle has them, in a directory of their own."""
    into.mkdir(parents=True)
    for f in Renderer(cluster).bundle(cluster.host(host)).files:
        if f.path.startswith("/etc/systemd/network/"):
            (into / Path(f.path).name).write_text(f.content)
    return into


def run_networkd(conf: Path, out: Path, mac: str, wait: str) -> dict[str, Any]:
    """networkd over `conf` in a fresh namespace whose kiln0 has `mac`; wait `online` (kiln0 configured) or
    `loaded` (every file read, then udev's .link parser too). Returns kiln0's addresses, the routes and the logs."""
    out.mkdir(parents=True, exist_ok=True)
    argv = ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", _SCRIPT, "sh"]
    env = {**os.environ, "NETWORKD": NETWORKD, "WAIT_ONLINE": WAIT_ONLINE}
    done = subprocess.run(
        [*argv, str(conf), str(out), mac, wait], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    logs = {p.stem: p.read_text() for p in out.glob("*.log")}
    [kiln0] = json.loads((out / "addr.json").read_text())
    return {"kiln0": kiln0, "routes": json.loads((out / "route.json").read_text()), **logs}


def addresses(kiln0: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in kiln0["addr_info"] if a["family"] == "inet"]


def routes(found: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["dst"], r["gateway"]) for r in found if "gateway" in r}


def test_networkd_gives_kiln0_every_address_the_mtu_and_each_route(
    cluster_with_networks: Cluster, tmp_path: Path
) -> None:
    conf = rendered(cluster_with_networks, "app1", tmp_path / "conf")
    got = run_networkd(conf, tmp_path / "out", "52:54:00:10:00:31", "online")
    assert "failed" not in got["wait"], got["networkd"][-3000:]
    assert got["kiln0"]["mtu"] == 9000
    assert addresses(got["kiln0"]) == ["10.10.0.31/24", "10.0.0.31/24", "10.1.0.31/16"]
    assert routes(got["routes"]) == {
        ("default", "10.10.0.1"),
        ("10.50.0.0/16", "10.0.0.1"),
        ("10.70.0.0/16", "10.10.0.254"),
    }
    assert not COMPLAINT.findall(got["networkd"])


def test_a_host_that_declares_nothing_is_configured_as_before(cluster_with_networks: Cluster, tmp_path: Path) -> None:
    conf = rendered(cluster_with_networks, "lb1", tmp_path / "conf")
    assert sorted(p.name for p in conf.iterdir()) == ["10-kiln0.link", "10-kiln0.network"]
    got = run_networkd(conf, tmp_path / "out", "52:54:00:10:00:11", "online")  # matched by MAC, as before
    assert "failed" not in got["wait"], got["networkd"][-3000:]
    assert addresses(got["kiln0"]) == ["10.10.0.11/24"]
    assert routes(got["routes"]) == {("default", "10.10.0.1")}
    assert got["kiln0"]["mtu"] == 1500


@pytest.mark.parametrize("host", ["web1", "web2"])
def test_every_bond_and_vlan_file_parses_and_loads(cluster_with_networks: Cluster, tmp_path: Path, host: str) -> None:
    conf = rendered(cluster_with_networks, host, tmp_path / "conf")
    got = run_networkd(conf, tmp_path / "out", "02:00:00:00:00:01", "loaded")  # no NIC of the host's: nothing moves
    assert "Enumeration completed" in got["networkd"], got["networkd"][-3000:]
    assert not COMPLAINT.findall(got["networkd"]), "networkd refused a line of a rendered file"
    assert not COMPLAINT.findall(got["udev"]), "udev refused a line of a rendered .link file"
    for netdev in conf.glob("*.netdev"):
        name = netdev.stem.removeprefix("10-")
        kind = "bond" if name == "kiln0" else "vlan"
        assert f'{name}: loaded "{kind}"' in got["networkd"]
    links = sorted(p.name for p in conf.glob("*.link"))
    assert links and all(f'Parsed configuration file "/etc/systemd/network/{n}"' in got["udev"] for n in links)


def test_the_parse_check_sees_a_broken_file(tmp_path: Path) -> None:
    """The complaint pattern above is what networkd and udev print: a misspelt key and an unknown mode show."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-kiln0.netdev").write_text("[NetDev]\nName=kiln9\nKind=bond\n\n[Bond]\nMode=balance-nonsense\n")
    (conf / "10-kiln0.network").write_text("[Match]\nName=kiln0\n\n[Network]\nAdress=10.0.0.1/24\n")
    (conf / "10-kiln0m0.link").write_text("[Match]\nPermanentMACAddress=02:00:00:00:00:09\n\n[Link]\nNmae=kiln0m0\n")
    got = run_networkd(conf, tmp_path / "out", "02:00:00:00:00:01", "loaded")
    assert [line.split(": ", 1)[0] for line in COMPLAINT.findall(got["networkd"])] == [
        "/etc/systemd/network/10-kiln0.netdev:6",
        "/etc/systemd/network/10-kiln0.network:5",
    ]
    assert COMPLAINT.findall(got["udev"]) == [
        "/etc/systemd/network/10-kiln0m0.link:5: Unknown key 'Nmae' in section [Link], ignoring."
    ]
