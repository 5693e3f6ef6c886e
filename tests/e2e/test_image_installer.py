"""The PXE installer under QEMU (TCG): booted with the kernel command line iPXE gives it, it fetches the
image's block map, streams the data chunks onto the disk and writes zeros over the rest (over a disk that
held other bytes before), checks the digest of what it wrote, writes /etc/kiln/seed.json into the
installed root, reports install events, and reboots; with a wrong digest it wipes the disk and stops."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import blockmap
from kiln.build import cli as build_cli
from kiln.build import installer
from kiln.build.imagefs import mounted
from kiln.build.progress import Display
from kiln.project import Project
from tests.e2e.image_helpers import GUEST_MAC, HOST_LOOPBACK, Vm
from tests.e2e.image_helpers import ImageServer as Server

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
MAC = GUEST_MAC
TOKEN = "enrol-" + "x" * 37  # the host's one-time enrolment token, as ./inv reprovision mints it
IMAGE_SIZE = 48 << 20


@pytest.fixture(scope="module")
def installer_dir() -> Path:
    project = Project()
    env = build_cli.prepare(project.cluster(), images=project.images, secrets=project.secrets)
    with Display(["installer"]) as display:
        assert installer.build(env, display).state in ("built", "up to date")
    return env.images / "installer"


@pytest.fixture(scope="module")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small disk image laid out as kiln's are (elements/kiln-base/block-device-kiln.yaml): GPT, a BIOS boot
    partition, an ESP, and root last, named root; the installer must find root by that name to write the seed."""
    raw = tmp_path_factory.mktemp("image") / "small.raw"
    with raw.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    table = (
        "label: gpt\n"
        "start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=BSP\n"
        "start=4096, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n"
        "start=12288, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
    )
    subprocess.run(["sfdisk", "-q", str(raw)], input=table, text=True, check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "kiln-img-test", "-E", f"offset={12288 * 512}", str(raw), "36M"], check=True
    )
    return raw


@pytest.fixture(scope="module")
def image_map(test_image: Path) -> blockmap.BlockMap:
    block_map = blockmap.scan(test_image)
    kinds = {e.kind for e in block_map.extents}
    assert kinds == {"data", "zero"}, "the test image has both kinds of extent"
    return block_map


@pytest.fixture()
def server(test_image: Path) -> Iterator[Server]:
    s = Server(test_image, name="small")
    yield s
    s.close()


DIRTY = b"\xa5" * (1 << 20)  # what a disk that held something else reads as


def _boot(tmp_path: Path, installer_dir: Path, server: Server, sha: str, extra: str = "") -> tuple[Vm, Path]:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        for _ in range(64):
            f.write(DIRTY)
    base = f"http://{HOST_LOOPBACK}:{server.port}"  # the test's server on the host's loopback
    append = (
        f"kiln.image={base}/small.data kiln.map={base}/small.map kiln.sha256={sha} kiln.disk=/dev/vda "
        f"kiln.url={base} kiln.host=web1 kiln.token={TOKEN} "
        f"kiln.size={IMAGE_SIZE} BOOTIF=01-{MAC.replace(':', '-')} console=ttyS0 {extra}"
    )
    return _installer(tmp_path, installer_dir, append, disk), disk


def _installer(tmp_path: Path, installer_dir: Path, append: str, disk: Path, *more: Path) -> Vm:
    # not isolated: the installer only goes to the URLs given on its command line
    return Vm(
        tmp_path,
        disk=disk,
        disk_format="raw",
        more_disks=more,
        kernel=installer_dir / "vmlinuz",
        initrd=installer_dir / "initrd.img",
        append=append,
        mac=MAC,
        memory=512,
        isolated=False,
    )


def test_installs_the_image_and_writes_the_seed(
    tmp_path: Path, installer_dir: Path, server: Server, test_image: Path, image_map: blockmap.BlockMap
) -> None:
    vm, disk = _boot(tmp_path, installer_dir, server, image_map.digest)
    with vm:
        vm.wait_for(r"kiln-installer: installed; rebooting", 300)
        assert vm.wait_exit(60) == 0, "-no-reboot: the installer's reboot ends QEMU"
    written, image = disk.read_bytes(), test_image.read_bytes()
    assert written[:512] == image[:512]
    for e in image_map.extents:  # the seed changed some data chunks; the zero chunks must be zeros again
        if e.kind == "zero":
            at, end = e.start * blockmap.CHUNK, (e.start + e.count) * blockmap.CHUNK
            assert written[at:end] == image[at:end] == bytes(end - at), f"chunks {e.start}+{e.count} zeroed"
    # past the image, only the disk's last 4 MiB are touched: zeroed, where an earlier install's backup GPT and a
    # mirrored root's RAID superblock would be
    assert written[IMAGE_SIZE:] == DIRTY * 12 + bytes(4 << 20), "nothing else past the image is touched"
    with mounted(disk) as root:
        seed = json.loads((root / "etc" / "kiln" / "seed.json").read_text())
    assert seed == {"host": "web1", "mac": MAC, "url": f"http://{HOST_LOOPBACK}:{server.port}", "token": TOKEN}
    assert {e["auth"] for e in server.events} == {f"Bearer {TOKEN}"}, "the events carry the host's token"
    steps = [(e["path"], e["step"], e["status"]) for e in server.events]
    assert steps == [("/v1/hosts/web1/events", "install", "start"), ("/v1/hosts/web1/events", "install", "ok")]
    assert image_map.digest in str(server.events[-1]["detail"])
    assert isinstance(server.events[-1]["duration"], int), "the installer times its own step"


def test_reports_progress_while_it_writes(
    tmp_path: Path, installer_dir: Path, test_image: Path, image_map: blockmap.BlockMap
) -> None:
    slow = Server(test_image, name="small", pace=1.0)  # a second per MiB of data
    try:
        vm, _ = _boot(tmp_path, installer_dir, slow, image_map.digest, "kiln.progress=2")
        with vm:
            vm.wait_for(r"kiln-installer: installed; rebooting", 300)
    finally:
        slow.close()
    statuses = [e["status"] for e in slow.events]
    assert statuses[0] == "start" and statuses[-1] == "ok" and "fail" not in statuses
    progress = [str(e["detail"]) for e in slow.events[1:-1]]
    writing = [d for d in progress if d.startswith("writing")]
    assert writing, f"at least one progress event while {image_map.data_bytes >> 20} MiB arrive at 1 MiB/s"
    assert all(re.fullmatch(r"(writing: \d+ of 48|checking: \d+ of \d+) MB", d) for d in progress), progress


def test_refuses_a_short_download(
    tmp_path: Path, installer_dir: Path, test_image: Path, image_map: blockmap.BlockMap
) -> None:
    broken = Server(test_image, name="small", cut=image_map.data_bytes - (1 << 20))
    try:
        vm, disk = _boot(tmp_path, installer_dir, broken, image_map.digest)
        with vm:
            vm.wait_for(r"FAILED: wrote 49283072 of 50331648 bytes: the download of \S+ ended early", 300)
            vm.wait_for(r"not rebooting", 60)
    finally:
        broken.close()
    assert [e["status"] for e in broken.events] == ["start", "fail"]
    assert disk.read_bytes()[: 2 << 20] == b"\0" * (2 << 20), "the partial image is wiped"


def test_refuses_a_digest_mismatch(tmp_path: Path, installer_dir: Path, server: Server) -> None:
    vm, disk = _boot(tmp_path, installer_dir, server, "0" * 64)
    with vm:
        vm.wait_for(r"FAILED: sha256 mismatch", 300)
        vm.wait_for(r"not rebooting", 60)  # printed once the fail event went out
    assert disk.read_bytes()[: 2 << 20] == b"\0" * (2 << 20), "the unverified image is wiped"
    assert [(e["step"], e["status"]) for e in server.events] == [("install", "start"), ("install", "fail")]
    assert "mismatch" in str(server.events[-1]["detail"])


def _table(disk: Path) -> dict:
    return json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, check=True).stdout)


def _probe(disk: Path, start: int, size: int) -> dict[str, str]:
    """blkid -p of the bytes of one partition: what the kernel and udev would say it holds."""
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", "-O", str(start * 512), "-S", str(size * 512), str(disk)],
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_mirrors_the_root_across_two_disks(
    tmp_path: Path, installer_dir: Path, server: Server, test_image: Path, image_map: blockmap.BlockMap
) -> None:
    """kiln.disk=/dev/vda,/dev/vdb (what the server's `raid1` answer sets): the image is written and checked on
    vda, copied onto vdb and checked there, vdb gets a GPT identity of its own, root grows on both to the end of
    the smaller disk, and the two root partitions become one RAID1 (metadata 1.0) through which the seed is
    written: each disk holds the same BIOS boot partition, ESP and root filesystem, readable without md."""
    disks = [tmp_path / "a.raw", tmp_path / "b.raw"]
    for disk, mib in zip(disks, (80, 96), strict=True):  # unequal: root is sized to the smaller
        with disk.open("wb") as f:
            for _ in range(mib):
                f.write(DIRTY)
    base = f"http://{HOST_LOOPBACK}:{server.port}"
    append = (
        f"kiln.image={base}/small.data kiln.map={base}/small.map kiln.sha256={image_map.digest} "
        f"kiln.disk=/dev/vda,/dev/vdb kiln.url={base} kiln.host=web1 kiln.token={TOKEN} "
        f"kiln.size={IMAGE_SIZE} BOOTIF=01-{MAC.replace(':', '-')} console=ttyS0"
    )
    with _installer(tmp_path, installer_dir, append, *disks) as vm:
        vm.wait_for(r"kiln-installer: root mirrored: /dev/vda3 and /dev/vdb3 are /dev/md0 \(RAID1, \d+ MB\)", 300)
        vm.wait_for(r"kiln-installer: installed; rebooting", 120)
        assert vm.wait_exit(60) == 0
    tables = [_table(d)["partitiontable"] for d in disks]
    assert tables[0]["id"] != tables[1]["id"], "the second disk has a GPT identity of its own"
    parts = [{p["name"]: p for p in t["partitions"]} for t in tables]
    assert [p["name"] for p in tables[1]["partitions"]] == ["BSP", "ESP", "root"]
    for name in ("BSP", "ESP", "root"):
        a, b = parts[0][name], parts[1][name]
        assert (a["start"], a["size"], a["type"]) == (b["start"], b["size"], b["type"]), name
        assert a["uuid"] != b["uuid"], f"{name}: a partition UUID of its own"
    root = parts[0]["root"]
    assert root["start"] + root["size"] == ((80 << 11) - 34) // 2048 * 2048, "root ends where the smaller disk does"
    data = [d.read_bytes() for d in disks]
    boot_end = parts[0]["root"]["start"] * 512
    assert data[0][1024 * 1024 : boot_end] == data[1][1024 * 1024 : boot_end], "the same BSP and ESP on both"
    members = [_probe(d, root["start"], root["size"]) for d in disks]
    assert [m.get("TYPE") for m in members] == ["linux_raid_member"] * 2, members
    assert members[0]["UUID"] == members[1]["UUID"], "one array"
    assert members[0]["LABEL"] == "any:root", "named for any host: assembled as /dev/md/root wherever it boots"
    seeds = []
    for d in disks:
        with mounted(d, fstype="ext4") as root_fs:
            seeds.append(json.loads((root_fs / "etc" / "kiln" / "seed.json").read_text()))
    assert seeds[0] == seeds[1] == {"host": "web1", "mac": MAC, "url": base, "token": TOKEN}
    assert [(e["step"], e["status"]) for e in server.events][-1] == ("install", "ok")
    assert "on /dev/vda and /dev/vdb (RAID1)" in str(server.events[-1]["detail"])
    assert any(str(e["detail"]).startswith("copying the image onto /dev/vdb") for e in server.events)
