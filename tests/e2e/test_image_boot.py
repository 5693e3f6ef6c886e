"""Boot smoke test per role image under QEMU (TCG): given its enrolment seed through fw_cfg (as the lab gives a
disk-booted VM), it reaches multi-user while firstboot.service runs and says it is waiting for
its bundle (no server is reachable), sshd runs with host keys made on this boot, and none of the role's services
started before first boot configured them.

The firmware is UEFI with Secure Boot enforcing and Microsoft's keys enrolled (OVMF), as a server ships: shim,
GRUB and the kernel must each be signed or the guest does not boot, and its kernel must say Secure Boot is on.
The same images boot on BIOS (SeaBIOS) in the lab, every role from its disk (tests/e2e/test_reference_lab.py),
and the PXE installer's tests: each image is booted on both firmwares by the whole suite, none twice here."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kiln.build.imagefs import mounted
from kiln.lab.firmware import Firmware
from tests.e2e.image_helpers import GUEST_MAC, ROLES, Vm, booted_root, journal, overlay

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = 1080  # TCG, five guests on two cores: about 6-8 min until the agent runs; the margin is for a slow host
WAITING = r"firstboot.*(fetch bundle: attempt \d+ failed|waiting for the bundle)"
SETTLED = r"firstboot.*(fetch bundle: attempt (9|\d\d+) failed|waiting for the bundle)"
MAC = GUEST_MAC
ROLE_SERVICES = {
    "lb": ("haproxy", "keepalived", "prometheus-node-exporter"),
    "web": ("nginx", "prometheus-nginx-exporter", "prometheus-node-exporter"),
    "app": ("kiln-app", "prometheus-node-exporter"),
    "db": ("mariadb", "prometheus-mysqld-exporter", "prometheus-node-exporter"),
    "mon": ("prometheus", "prometheus-alertmanager", "systemd-journal-remote", "prometheus-node-exporter"),
}


@dataclass
class Boot:
    """What one role image's boot left: its console, then (read after power-down) its journal and first-boot files."""

    console: str = ""
    journal: str = ""
    host_keys: list[str] = field(default_factory=list)
    machine_id: str = ""
    error: str = ""


def _boot(role: str, images: Path, workdir: Path) -> tuple[Boot, Path]:
    disk = overlay(images / role / f"{role}.qcow2", workdir / "disk.qcow2")
    seed = workdir / "seed.json"  # the guest is isolated: this URL leads nowhere, so the agent keeps waiting
    seed.write_text(json.dumps({"url": "https://10.0.2.2:9443", "host": f"{role}1", "mac": MAC, "token": "t" * 43}))
    boot = Boot()
    with Vm(workdir, disk=disk, mac=MAC, seed=seed, cpus=1, firmware=Firmware.SECURE_BOOT) as vm:
        try:
            # the agent's first failed fetch: the boot got as far as starting it (the journal, read after
            # power-down, says multi-user was reached and sshd listens: the console stops showing unit status)
            vm.wait_for(WAITING, BOOT_TIMEOUT)
            # sshd starts once ssh-keygen.service made the host keys; give it the time of a few more fetch attempts
            # (its firewall drops SSH from all but the admin networks: the test cannot just connect)
            vm.wait_for(SETTLED, 300)
        except AssertionError as e:
            boot.error = str(e)
        boot.console = vm.text()
        vm.powerdown()
    return boot, disk


@pytest.fixture(scope="module")
def boots(images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Boot]:
    """Every role image booted at once: five emulated CPUs share the cores, and the boots take about half as
    long as one after another (the fetch attempts the test waits for are timers, not work)."""
    with ThreadPoolExecutor(len(ROLES)) as pool:
        started = {role: pool.submit(_boot, role, images, tmp_path_factory.mktemp(role)) for role in ROLES}
        booted = {role: future.result() for role, future in started.items()}
    for boot, disk in booted.values():  # one at a time: each mounts a loop device
        with booted_root(disk, disk.parent) as root:
            boot.host_keys = sorted(p.name for p in (root / "etc" / "ssh").glob("ssh_host_*_key"))
            boot.machine_id = (root / "etc" / "machine-id").read_text().strip()
            boot.journal = journal(root)
    return {role: boot for role, (boot, _) in booted.items()}


@pytest.mark.parametrize("role", ROLES)
def test_role_image_boots_and_waits_for_its_bundle(role: str, images: Path, boots: dict[str, Boot]) -> None:
    boot = boots[role]
    assert not boot.error, boot.error
    assert "firstboot.service" in boot.console
    assert boot.host_keys == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key"], "the keys sshd offers are made on boot"
    assert re.fullmatch(r"[0-9a-f]{32}", boot.machine_id), "machine-id is initialized on first boot"
    log = boot.journal
    # the kernel's own word (arch/x86/kernel/setup.c), and lockdown follows from it on Debian's kernel
    assert re.search(r"kernel: secureboot: Secure boot enabled", log), "Secure Boot was not on in the guest"
    assert re.search(r"sshd\[\d+\]: Server listening on 0\.0\.0\.0 port 22", log), log[-3000:]
    assert re.search(rf"provisioning server https://10\.0\.2\.2:9443 from the QEMU fw_cfg \(host {role}1\)", log)
    assert re.search(WAITING, log)
    # multi-user does not wait for the agent: it is reached while the agent still waits for its server
    multi_user = re.search(r"Reached target multi-user\.target", log)
    assert multi_user, log[-3000:]
    assert re.search(SETTLED, log[multi_user.end() :]), "firstboot kept waiting after multi-user was reached"
    for service in ROLE_SERVICES[role]:
        assert not re.search(rf"Started {re.escape(service)}\.service", log), f"{service} ran before first boot"

    # the image itself did not change: keys and identity belong to the booted copy only
    with mounted(images / role / f"{role}.raw") as root:
        assert not list((root / "etc" / "ssh").glob("ssh_host_*"))
