"""The kpartx/dmsetup stand-in: on a host without device-mapper it maps a loop device's partitions
where diskimage-builder looks for them (/dev/mapper/loopNpK), reached through sudo's secure_path,
and changes nothing outside the private mount namespace it runs in."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.build import devmapper
from kiln.run import run

pytestmark = pytest.mark.integration


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_detection_agrees_with_dmsetup() -> None:
    works = subprocess.run(["dmsetup", "version"], capture_output=True).returncode == 0
    assert devmapper.has_device_mapper() is works


def test_standin_maps_partitions_through_sudo_and_leaves_the_host_alone(tmp_path: Path) -> None:
    kpartx, dmsetup = shutil.which("kpartx"), shutil.which("dmsetup")
    assert kpartx and dmsetup, "kpartx and dmsetup are installed by ./inv (hostdeps)"
    before = (_sha(kpartx), _sha(dmsetup))
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(64 << 20)
    loop = run(["losetup", "--find", "--show", raw]).stdout.strip()
    name = loop.removeprefix("/dev/")
    try:
        run(["sgdisk", "-n", "1:0:+16M", "-n", "2:0:0", loop])
        # what DIB does, in the order it does it: map, make a filesystem on a mapped partition, unmap
        script = f"""
            set -eu
            sudo kpartx -uvs {loop}
            test -b /dev/mapper/{name}p1 && test -b /dev/mapper/{name}p2
            mkfs.ext4 -q -L kilnimgtest /dev/mapper/{name}p2
            echo "label=$(blkid -o value -s LABEL /dev/mapper/{name}p2)"
            sudo dmsetup --noudevsync mknodes
            sudo kpartx -d {loop}
            test ! -e /dev/mapper/{name}p1
            grep -q ' /usr/sbin/kpartx ' /proc/self/mountinfo
        """
        result = run(devmapper.wrap(["sh", "-c", script], standin=True), timeout=60)
        assert f"add map {name}p2" in result.stdout
        assert "label=kilnimgtest" in result.stdout
    finally:
        run(["partx", "-d", loop], check=False)
        run(["losetup", "-d", loop], check=False)
        devmapper.remove_empty_mapper_dir()
    assert (_sha(kpartx), _sha(dmsetup)) == before
    assert " /usr/sbin/kpartx " not in Path("/proc/self/mountinfo").read_text(), "the bind mount leaked out"
    assert not list(Path("/dev").glob(f"mapper/{name}p*"))
