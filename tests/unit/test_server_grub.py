"""GRUB configs (the Secure Boot network boot) and the TFTP root's layout (the listener: test_server_tftp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.model import Cluster
from kiln.server import grub, ipxe, netboot
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
    assert lines[-3:-1] == ["initrd /images/installer/initrd.img", "boot"]
    assert lines[-1].startswith("echo 'kiln: the installer did not start"), "a failed boot returns to the loop"
    assert "echo 'kiln: installing db2 (role db)" in grub.config(plan)


def test_unknown_machine_is_told_why_and_returns_to_the_stubs_loop() -> None:
    lines = grub.config(Unknown("52:54:00:00:00:01")).splitlines()
    assert "not in roles.yaml" in lines[1] and "52:54:00:00:00:01" in lines[1]
    assert lines[-1] == "echo 'kiln: asking again in 30 s'", "no sleep, no config of its own: the stub loops"
    assert not [line for line in lines if line.startswith(("sleep", "configfile", "source"))]


def test_installed_host_chainloads_the_shim_on_its_disk(cluster: Cluster) -> None:
    """Not `exit` (GRUB 2.06 exits with success: EDK2 firmware then shows its boot menu); $root set to the disk, since
    the chainloader gives the image $root's device path; `exit` only when no disk holds the loader."""
    lines = grub.config(LocalDisk(cluster.host("web2"))).splitlines()
    assert lines[2:5] == [
        "search --no-floppy --file --set=root /EFI/BOOT/BOOTX64.EFI",
        "chainloader /EFI/BOOT/BOOTX64.EFI",
        "boot",
    ]
    assert lines[-1] == "exit"


def test_messages_are_literal_in_grub(cluster: Cluster) -> None:
    """A message with quotes, $ and globs stays one literal word: GRUB would otherwise expand or split it."""
    text = grub.config(Wait(cluster.host("web1"), ("it's $HOME * [x]",)))
    assert "echo 'kiln: it'\\''s $HOME * [x]'" in text
    assert grub.quote("kiln.url=https://10.10.0.1:8443") == "kiln.url=https://10.10.0.1:8443"


def test_stub_asks_kiln_in_a_loop() -> None:
    """Whatever a config does when it returns (a wait, a failed fetch, a kernel that did not start), GRUB asks again
    RETRY_SECONDS later, never stopping at its prompt, at one level of its stack."""
    loop = ["while true; do", "    source /kiln/grub/${net_default_mac}", "    sleep 30", "done"]
    assert grub.stub().splitlines()[1:] == loop
    assert grub.stub("10.10.0.1").splitlines()[1:] == ["set root=(tftp,10.10.0.1)", *loop]


def test_layout_writes_the_signed_chain_and_the_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shim, grubnet = tmp_path / "shim.signed", tmp_path / "grubnet.signed"
    shim.write_bytes(b"shim")
    grubnet.write_bytes(b"grub")
    monkeypatch.setattr(
        netboot, "SIGNED", {"shimx64.efi": (shim, "shim-signed"), "grubx64.efi": (grubnet, "grub-efi-amd64-signed")}
    )
    root = tmp_path / "tftp"
    netboot.layout(root, "10.10.0.1")
    assert (root / "shimx64.efi").read_bytes() == b"shim" and (root / "grubx64.efi").read_bytes() == b"grub"
    assert "set root=(tftp,10.10.0.1)" in (root / "grub" / "grub.cfg").read_text()
    grubnet.unlink()
    with pytest.raises(netboot.Missing, match="grub-efi-amd64-signed"):
        netboot.layout(root)
