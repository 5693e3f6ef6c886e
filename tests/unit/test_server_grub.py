"""GRUB configs (the Secure Boot network boot): the same decisions as the iPXE scripts, in GRUB's syntax."""

from __future__ import annotations

from kiln.model import Cluster
from kiln.server import grub, ipxe
from kiln.server.bootplan import Install, Installer, InstallImage, LocalDisk, Unknown, Wait

SHA = "ab" * 32
TOKEN = "Zm9vYmFyLXRva2VuLWZvci10aGUtaW5zdGFsbGVyLXRlc3Q"


def test_install_config_boots_the_installer_over_tftp_with_the_ipxe_command_line(cluster: Cluster) -> None:
    """The same command line as the iPXE script's (one decision, two syntaxes), without `initrd=`: GRUB hands the
    kernel its initrd itself."""
    installer = Installer("http://10.10.0.1:8080", cluster.provisioning_url)
    plan = Install(cluster.host("db2"), InstallImage("db", SHA, 2 << 30), installer, TOKEN)
    lines = grub.config(plan).splitlines()
    kernel = next(line for line in lines if line.startswith("linux "))
    ipxe_kernel = next(line for line in ipxe.script(plan, "http://x").splitlines() if line.startswith("kernel "))
    assert kernel.split()[0:2] == ["linux", "/images/installer/vmlinuz"]
    assert kernel.split()[2:] == [a for a in ipxe_kernel.split()[2:] if a != "initrd=initrd.img"]
    assert lines[-2:] == ["initrd /images/installer/initrd.img", "boot"]
    assert "echo 'kiln: installing db2 (role db)" in grub.config(plan)


def test_unknown_machine_waits_then_reads_its_config_again() -> None:
    lines = grub.config(Unknown("52:54:00:00:00:01")).splitlines()
    assert "not in roles.yaml" in lines[1] and "52:54:00:00:00:01" in lines[1]
    assert lines[-2:] == ["sleep 30", "configfile /kiln/grub/${net_default_mac}"]


def test_installed_host_exits_to_the_firmware_boot_order(cluster: Cluster) -> None:
    assert grub.config(LocalDisk(cluster.host("web2"))).splitlines()[-1] == "exit"


def test_messages_are_literal_in_grub(cluster: Cluster) -> None:
    """A message with quotes, $ and globs stays one literal word: GRUB would otherwise expand or split it."""
    text = grub.config(Wait(cluster.host("web1"), ("it's $HOME * [x]",)))
    assert "echo 'kiln: it'\\''s $HOME * [x]'" in text
    assert grub.quote("kiln.url=https://10.10.0.1:8443") == "kiln.url=https://10.10.0.1:8443"


def test_stub_sends_grub_on_to_kiln() -> None:
    assert grub.stub().splitlines()[1:] == ["configfile /kiln/grub/${net_default_mac}"]
    assert grub.stub("10.10.0.1").splitlines()[1:] == [
        "set root=(tftp,10.10.0.1)",
        "configfile /kiln/grub/${net_default_mac}",
    ]
