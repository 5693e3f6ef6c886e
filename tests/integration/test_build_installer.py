"""The PXE installer is assembled from Debian packages: a kernel and a busybox initramfs whose /init,
DHCP hook and kernel modules (with dependencies, in load order) are all there; a second build with
the same inputs is up to date."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kiln.build import installer, manifest
from kiln.build.builder import BuildEnv
from kiln.build.mirror import Mirror
from kiln.build.progress import Display
from kiln.model import Cluster
from kiln.secrets import SecretStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # builds the initramfs twice: half a minute


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, cluster: Cluster, secret_store: SecretStore) -> Path:
    images = tmp_path_factory.mktemp("images")
    env = BuildEnv(cluster=cluster, mirror=Mirror("http://unused", "http://unused"), store=secret_store, images=images)
    with Display(["installer"]) as display:
        outcome = installer.build(env, display)
        assert outcome.state == "built", outcome.detail
        again = installer.build(env, display)
    assert again.state == "up to date"
    return images / "installer"


def test_outputs_and_manifest(built: Path) -> None:
    data = manifest.read(built)
    assert data is not None and data["role"] == "installer"
    assert set(data["files"]) == {"vmlinuz", "initrd.img"}
    for name, entry in data["files"].items():
        assert manifest.file_entry(built / name) == entry
    assert any(p.startswith("linux-image-") for p in data["packages"]) and "busybox-static" in data["packages"]
    assert (
        b"Linux kernel" in (built / "vmlinuz").read_bytes()[:0x300]
        or (built / "vmlinuz").read_bytes()[0x202:0x206] == b"HdrS"
    )


def test_initramfs_contents(built: Path, tmp_path: Path) -> None:
    initrd = (built / "initrd.img").read_bytes()
    subprocess.run(["sh", "-c", "gzip -dc | cpio -idm --quiet"], input=initrd, cwd=tmp_path, check=True)
    init = tmp_path / "init"
    assert init.is_file() and os.access(init, os.X_OK)
    assert os.readlink(tmp_path / "bin" / "sh") == "busybox"
    assert (tmp_path / "dev" / "console").is_char_device()
    syntax = subprocess.run([str(tmp_path / "bin" / "busybox"), "sh", "-n", str(init)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    order = (tmp_path / "etc" / "kiln-modules").read_text().split()
    for rel in order:
        assert (tmp_path / "lib" / "modules" / rel).is_file(), rel
    names = [Path(r).name.split(".ko")[0] for r in order]
    for needed in ("virtio_blk", "virtio_net", "ext4"):
        assert needed in names
    assert names.index("virtio") < names.index("virtio_blk"), "dependencies load first"
    assert names.index("jbd2") < names.index("ext4")
    assert names.index("md-mod") < names.index("raid1")
    # mdadm and sfdisk run inside it, on the libraries it carries (chroot: nothing of this host's is loaded)
    for tool, says in (("mdadm", "mdadm - v4"), ("sfdisk", "sfdisk from util-linux")):
        ran = subprocess.run(["chroot", str(tmp_path), f"/sbin/{tool}", "--version"], capture_output=True, text=True)
        assert says in ran.stdout + ran.stderr, (tool, ran.stderr)


def test_initramfs_is_reproducible(built: Path, cluster: Cluster, secret_store: SecretStore, tmp_path: Path) -> None:
    env = BuildEnv(
        cluster=cluster, mirror=Mirror("http://unused", "http://unused"), store=secret_store, images=tmp_path
    )
    with Display(["installer"]) as display:
        assert installer.build(env, display, force=True).state == "built"
    assert (tmp_path / "installer" / "initrd.img").read_bytes() == (built / "initrd.img").read_bytes()
