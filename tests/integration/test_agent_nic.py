"""The agent renames the cluster NIC to kiln0 on the first boot (udev applies the .link only at the next)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.integration
NS = "kiln-agt-nic"
MAC = "52:54:00:10:00:21"
RENAME = "import sys\nfrom firstboot.nic import ensure_name\nprint(ensure_name(sys.argv[1], 'kiln0'))"


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    ip("netns", "add", NS)
    try:
        ip("-n", NS, "link", "add", "ens3", "address", MAC, "type", "veth", "peer", "name", "peer0")
        ip("-n", NS, "link", "set", "ens3", "up")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def rename(ns: str) -> str:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", RENAME, MAC]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def test_the_nic_with_the_hosts_mac_becomes_kiln0_and_stays_up(namespace: str) -> None:
    assert rename(namespace) == f"renamed ens3 to kiln0 ({MAC})"
    links = {link["ifname"]: link for link in json.loads(ip("-n", namespace, "-json", "link", "show").stdout)}
    assert "ens3" not in links and "UP" in links["kiln0"]["flags"]
    assert rename(namespace) == f"kiln0 ({MAC}) unchanged"
