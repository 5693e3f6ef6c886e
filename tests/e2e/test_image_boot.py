"""Boot smoke test per role image under QEMU (TCG): given its enrolment seed through fw_cfg (as the lab gives a
disk-booted VM), it reaches multi-user and a login prompt while firstboot.service runs and says it is waiting for
its bundle (no server is reachable), sshd runs with host keys made on this boot, and none of the role's services
started before first boot configured them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.image_helpers import ROLES, Vm, booted_root, build_all_images, journal, overlay

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = 420  # TCG on two cores: about a minute to the login prompt; the margin is for a loaded machine
WAITING = r"firstboot.*(fetch bundle: attempt \d+ failed|waiting for the bundle)"
SETTLED = r"firstboot.*(fetch bundle: attempt (9|\d\d+) failed|waiting for the bundle)"
MAC = "52:54:00:12:34:56"
ROLE_SERVICES = {
    "lb": ("haproxy", "keepalived", "prometheus-node-exporter"),
    "web": ("nginx", "prometheus-nginx-exporter", "prometheus-node-exporter"),
    "app": ("kiln-app", "prometheus-node-exporter"),
    "db": ("mariadb", "prometheus-mysqld-exporter", "prometheus-node-exporter"),
}


@pytest.fixture(scope="session")
def images() -> Path:
    return build_all_images()


@pytest.mark.parametrize("role", ROLES)
def test_role_image_boots_and_waits_for_its_bundle(role: str, images: Path, tmp_path: Path) -> None:
    disk = overlay(images / role / f"{role}.qcow2", tmp_path / "disk.qcow2")
    seed = tmp_path / "seed.json"  # the guest is isolated: this URL leads nowhere, so the agent keeps waiting
    seed.write_text(json.dumps({"url": "https://10.0.2.2:9443", "host": f"{role}1", "mac": MAC, "token": "t" * 43}))
    with Vm(tmp_path, disk=disk, mac=MAC, seed=seed) as vm:
        vm.wait_for(r"login:", BOOT_TIMEOUT)
        vm.wait_for(WAITING, 180)
        # sshd starts once ssh-keygen.service made the host keys; the console stops showing unit status at the
        # login prompt, so give it the time of a few more fetch attempts, then read the journal after power-down
        # (its firewall drops SSH from anywhere but the admin networks, so the test cannot simply connect)
        vm.wait_for(SETTLED, 300)
        console = vm.text()
        vm.powerdown()
    assert "firstboot.service" in console

    with booted_root(disk, tmp_path) as root:
        keys = sorted(p.name for p in (root / "etc" / "ssh").glob("ssh_host_*_key"))
        assert keys == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key"], "the keys sshd offers are made on first boot"
        machine_id = (root / "etc" / "machine-id").read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{32}", machine_id), "machine-id is initialized on first boot"
        log = journal(root)
    assert re.search(r"sshd\[\d+\]: Server listening on 0\.0\.0\.0 port 22", log), log[-3000:]
    assert re.search(rf"provisioning server https://10\.0\.2\.2:9443 from the QEMU fw_cfg \(host {role}1\)", log)
    waiting = re.search(WAITING, log)
    assert waiting
    # multi-user does not wait for the agent: it is reached while the agent still waits for its server
    multi_user = re.search(r"Reached target multi-user\.target", log)
    assert multi_user, log[-3000:]
    assert re.search(SETTLED, log[multi_user.end() :]), "firstboot kept waiting after multi-user was reached"
    for service in ROLE_SERVICES[role]:
        assert not re.search(rf"Started {re.escape(service)}\.service", log), f"{service} ran before first boot"

    # the image itself did not change: keys and identity belong to the booted copy only
    pristine = images / role / f"{role}.raw"
    from kiln.build.imagefs import mounted

    with mounted(pristine) as root:
        assert not list((root / "etc" / "ssh").glob("ssh_host_*"))
