"""(slow) A bond and a VLAN, declared in roles.yaml hosts[].network, made by the role image's own systemd-networkd and
kernel under QEMU: what this machine's kernel cannot do (no bonding, no 8021q driver; tests/integration/
test_networkd_netns.py proves there only that every rendered file parses and loads).

The web image, copied, gets the networkd files the host's bundle carries (rendered by kiln, as the agent writes
them) and a probe unit that reports to the serial console; its agent is masked (no server here). The guest has two
NICs, the bond's members, on taps in a bridge of the test's own network namespace, which holds the cluster
network's gateway address. The test checks, from outside the guest:

- the bond (active-backup, primary the first member, MTU 9000) holds the host's address, and sshd answers on it;
- with the primary's link cut (QEMU's set_link), the backup takes over and sshd still answers;
- frames of VLAN 20 leave with the 802.1Q tag (tcpdump on the bridge), from the VLAN's own address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.build.imagefs import mounted
from kiln.model import Cluster, parse_roles
from kiln.render import Renderer
from tests.e2e.image_helpers import Vm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces, taps and loop mounts need root"),
    pytest.mark.skipif(not shutil.which("tcpdump"), reason="needs tcpdump (./inv test installs it)"),
]

PRIMARY, BACKUP = "52:54:00:10:00:21", "52:54:00:10:01:21"
HOST = f"""  - name: web1
    role: web
    mac: "{PRIMARY}"
    ip: 10.10.0.21
    network:
      mtu: 9000
      bond: {{mode: active-backup, members: ["{PRIMARY}", "{BACKUP}"], primary: "{PRIMARY}"}}
      vlans: [{{id: 20, addresses: [10.20.0.21/24], mtu: 1500}}]
"""
GATEWAY = "10.10.0.1/24"
BOOT_TIMEOUT = 600  # TCG, one guest: about 2 min to multi-user; the margin is for a loaded host
FAILOVER_WITHIN = 30  # seconds: the bond's MII monitor looks every 100 ms; the probe reports each second

# The probe, on the guest's console: the links once networkd configured them, then (VLAN traffic: one UDP packet
# to the VLAN's gateway, so the kernel ARPs for it there) the bond's active member each second, 900 times at most.
PROBE = r"""#!/bin/bash
exec > /dev/ttyS0 2>&1
for _ in $(seq 1 300); do
    ip -br addr show kiln0 | grep -q 10.10.0.21 && ip -br addr show kiln0.20 | grep -q 10.20.0.21 && break
    sleep 1
done
echo "KILN-NETTEST-LINKS $(ip -j -d addr show | tr -d '\n')"
for _ in $(seq 1 900); do
    echo x > /dev/udp/10.20.0.1/9 2>/dev/null
    echo "KILN-NETTEST-ACTIVE $(sed -n 's/^Currently Active Slave: //p' /proc/net/bonding/kiln0)"
    sleep 1
done
"""
PROBE_UNIT = """[Unit]
Description=kiln test: report the links networkd made
Wants=systemd-networkd.service
After=systemd-networkd.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/kiln-nettest

[Install]
WantedBy=multi-user.target
"""
# serial-getty@ttyS0 too: when it starts, agetty hangs the console up (vhangup), and the probe, which opened it
# before, writes nowhere from then on; the kernel's bond messages still show, the probe's lines stop.
MASKED = ("firstboot.service", "kiln-converge.service", "kiln-converge.path", "serial-getty@ttyS0.service")


@pytest.fixture(scope="module")
def cluster(shipped_roles: Path) -> Cluster:
    lines = shipped_roles.read_text().splitlines(keepends=True)
    return parse_roles("".join(HOST if "name: web1," in line else line for line in lines))


def prepared_disk(image: Path, cluster: Cluster, into: Path) -> Path:
    """A copy of the web image with web1's networkd files (as its bundle has them), the probe, and the agent
    masked."""
    disk = into / "web.raw"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    bundle = Renderer(cluster).bundle(cluster.host("web1"))
    files = [f for f in bundle.files if f.path.startswith("/etc/systemd/network/")]
    assert {Path(f.path).name for f in files} >= {"10-kiln0.netdev", "10-kiln0.20.netdev", "10-kiln0m1.link"}
    with mounted(disk, writable=True) as root:
        for f in files:
            (root / f.path.lstrip("/")).write_text(f.content)
        probe = root / "usr/local/sbin/kiln-nettest"
        probe.write_text(PROBE)
        probe.chmod(0o755)
        (root / "etc/systemd/system/kiln-nettest.service").write_text(PROBE_UNIT)
        (root / "etc/systemd/system/multi-user.target.wants/kiln-nettest.service").symlink_to(
            "/etc/systemd/system/kiln-nettest.service"
        )
        for unit in MASKED:
            for link in (root / "etc/systemd/system").rglob(unit):
                link.unlink()
            (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
    return disk


class Namespace:
    """A network namespace with a bridge holding the gateway's address and one tap per member."""

    def __init__(self, taps: list[str]) -> None:
        self.name = f"kiln-nett-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        for args in (
            ["link", "set", "lo", "up"],
            ["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"],
            ["addr", "add", GATEWAY, "dev", "br0"],
            ["link", "set", "br0", "up"],
        ):
            self.ip(*args)
        for tap in taps:
            self.ip("tuntap", "add", "dev", tap, "mode", "tap")
            self.ip("link", "set", tap, "master", "br0", "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def ssh_banner(self, address: str, tries: int) -> bool:
        """Whether the guest's sshd greets a connection from the bridge (the image's firewall lets the admin network
        in on 22) within `tries` attempts of at most 3 s, one a second."""
        script = f"exec 3<>/dev/tcp/{address}/22 && head -c 8 <&3"
        for _ in range(tries):
            done = subprocess.run(
                self.argv(["timeout", "3", "bash", "-c", script]), capture_output=True, text=True, check=False
            )
            if done.stdout.startswith("SSH-2.0"):
                return True
            time.sleep(1)
        return False

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    ns = Namespace(["nett0", "nett1"])
    try:
        yield ns
    finally:
        ns.close()


def monitor(vm: Vm, command: str) -> None:
    """One QEMU monitor (HMP) command."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(vm.monitor))
        s.sendall(command.encode() + b"\n")
        time.sleep(0.5)


def links(console: str) -> dict[str, dict]:
    [line] = re.findall(r"KILN-NETTEST-LINKS (.*)", console)
    return {link["ifname"]: link for link in json.loads(line)}


def active_after(vm: Vm, mark: int) -> str:
    found = re.findall(r"KILN-NETTEST-ACTIVE (\S*)", vm.text()[mark:])
    return found[-1] if found else ""


def test_bond_fails_over_and_vlan_frames_are_tagged(
    images: Path, cluster: Cluster, namespace: Namespace, tmp_path: Path
) -> None:
    disk = prepared_disk(images / "web" / "web.raw", cluster, tmp_path)
    capture = tmp_path / "vlan.txt"
    with capture.open("wb") as out:
        tcpdump = subprocess.Popen(
            namespace.argv(["tcpdump", "-i", "br0", "-e", "-n", "-l", "-c", "1", "vlan 20 and arp"]),
            stdout=out,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    nics = []
    for index, (tap, mac) in enumerate((("nett0", PRIMARY), ("nett1", BACKUP))):
        nics += [
            "-netdev", f"tap,id=m{index},ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=m{index},mac={mac},host_mtu=9000",
        ]  # fmt: skip
    vm = Vm(tmp_path, disk=disk, disk_format="raw", cpus=1, nics=nics)
    vm.argv = namespace.argv(vm.argv)  # QEMU in the namespace, where the taps are
    try:
        with vm:
            vm.wait_for(r"KILN-NETTEST-ACTIVE", BOOT_TIMEOUT)
            found = links(vm.text())
            bond, vlan = found["kiln0"], found["kiln0.20"]
            assert bond["linkinfo"]["info_kind"] == "bond" and bond["address"] == PRIMARY and bond["mtu"] == 9000
            assert bond["linkinfo"]["info_data"]["mode"] == "active-backup"
            assert [a["local"] for a in bond["addr_info"] if a["family"] == "inet"] == ["10.10.0.21"]
            for member in ("kiln0m0", "kiln0m1"):
                assert found[member]["master"] == "kiln0" and found[member]["mtu"] == 9000, found[member]
            assert vlan["link"] == "kiln0" and vlan["mtu"] == 1500
            assert vlan["linkinfo"]["info_data"] == {**vlan["linkinfo"]["info_data"], "protocol": "802.1Q", "id": 20}
            assert [a["local"] for a in vlan["addr_info"] if a["family"] == "inet"] == ["10.20.0.21"]

            assert active_after(vm, 0) == "kiln0m0", "the primary member carries the bond"
            assert namespace.ssh_banner("10.10.0.21", 30), "the bond carries the cluster network: sshd answers"

            mark = len(vm.text())
            monitor(vm, "set_link m0 off")
            cut = time.monotonic()
            deadline = cut + FAILOVER_WITHIN
            while active_after(vm, mark) != "kiln0m1" and time.monotonic() < deadline:
                time.sleep(1)
            assert active_after(vm, mark) == "kiln0m1", "the backup took over when the primary's link went down"
            print(f"the backup reported active {time.monotonic() - cut:.1f} s after the cut (the probe: each second)")
            assert namespace.ssh_banner("10.10.0.21", 10), "sshd still answers, through the backup member"

        deadline = time.monotonic() + 10  # the probe sent a VLAN 20 datagram each second of the boot
        while tcpdump.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        seen = capture.read_text()
        assert "vlan 20" in seen and "tell 10.20.0.21" in seen, f"no ARP tagged 20 on the bridge: {seen!r}"
    finally:
        if tcpdump.poll() is None:
            tcpdump.kill()
            tcpdump.wait(timeout=10)
        disk.unlink()  # a copy of the image: pytest keeps the last runs' directories
