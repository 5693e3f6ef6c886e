"""The installer's disk: a host's rule over what lsblk reports picks exactly one disk, or refuses naming all it saw."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kiln.model import DiskRule
from kiln.targetdisk import NoDisk, choose, disks_from_lsblk, path_ids, targets

GIB = 1 << 30
IMAGE = 2 * GIB


def _disk(name: str, size: int, model: str | None, serial: str | None, wwn: str | None, **more: object) -> dict:
    return {
        "name": name,
        "size": size,
        "type": "disk",
        "rm": False,
        "ro": False,
        "model": model,
        "serial": serial,
        "wwn": wwn,
        "mountpoints": [None],
        **more,
    }


# `lsblk --json -b -o NAME,SIZE,TYPE,RM,RO,MODEL,SERIAL,WWN,MOUNTPOINTS` (util-linux 2.38) on a 1U server booted
# from a USB stick: two equal SATA SSDs, an NVMe data disk, the stick, an old disk whose partition is mounted
SERVER = {
    "blockdevices": [
        _disk("sda", 480103981056, "SAMSUNG MZ7LH480HAHQ-00005", "S45PNA0M123456", "0x5002538e40a1b2c3"),
        _disk("sdb", 480103981056, "SAMSUNG MZ7LH480HAHQ-00005", "S45PNA0M123457", "0x5002538e40a1b2c4"),
        _disk(
            "sdc",
            15376000000,
            "Ultra Fit",
            "4C530001230822112473",
            None,
            rm=True,
            children=[
                {
                    "name": "sdc1",
                    "size": 15374950400,
                    "type": "part",
                    "rm": True,
                    "ro": False,
                    "mountpoints": ["/run/live/medium"],
                }
            ],
        ),
        _disk(
            "sdd",
            240057409536,
            "INTEL SSDSC2KB240G8",
            "PHYF9123004L240AGN",
            "0x55cd2e41512a6b2f",
            children=[
                {
                    "name": "sdd1",
                    "size": 536870912,
                    "type": "part",
                    "rm": False,
                    "ro": False,
                    "mountpoints": ["/boot/efi"],
                },
                {"name": "sdd2", "size": 239519490048, "type": "part", "rm": False, "ro": False, "mountpoints": [None]},
            ],
        ),
        _disk(
            "nvme0n1",
            3840755982336,
            "SAMSUNG MZQL23T8HCLS-00A07",
            "S64HNE0T501234",
            "eui.36344630529012340025384500000001",
        ),
        {
            "name": "sr0",
            "size": 1073741312,
            "type": "rom",
            "rm": True,
            "ro": False,
            "model": "Virtual CDROM0",
            "serial": "AAAABBBBCCCC1",
            "wwn": None,
            "mountpoints": [None],
        },
        _disk("zram0", 4294967296, None, None, None, mountpoints=["[SWAP]"]),
    ]
}
BY_PATH = {  # readlink of each /dev/disk/by-path entry
    "pci-0000:00:17.0-ata-1": "../../sda",
    "pci-0000:00:17.0-ata-1.0": "../../sda",
    "pci-0000:00:17.0-ata-2": "../../sdb",
    "pci-0000:00:17.0-ata-2.0": "../../sdb",
    "pci-0000:00:14.0-usb-0:4:1.0-scsi-0:0:0:0": "../../sdc",
    "pci-0000:00:14.0-usb-0:4:1.0-scsi-0:0:0:0-part1": "../../sdc1",
    "pci-0000:3b:00.0-sas-phy0-lun-0": "../../sdd",
    "pci-0000:5e:00.0-nvme-1": "../../nvme0n1",
}


def _server() -> list:
    return disks_from_lsblk(SERVER, BY_PATH)


def _refusal(rule: DiskRule, disks: list | None = None, image: int = IMAGE) -> str:
    with pytest.raises(NoDisk) as refused:
        choose(_server() if disks is None else disks, rule, image)
    return str(refused.value)


def test_lsblk_output_becomes_disks_with_their_by_path_names_and_mounts():
    disks = {d.name: d for d in _server()}
    assert list(disks) == ["sda", "sdb", "sdc", "sdd", "nvme0n1", "sr0", "zram0"]
    assert disks["sda"].by_path == ("pci-0000:00:17.0-ata-1", "pci-0000:00:17.0-ata-1.0")
    assert disks["sdc"].removable and disks["sdc"].mounted == ("/run/live/medium",)
    assert disks["sdd"].mounted == ("/boot/efi",)
    assert disks["zram0"].mounted == ("[SWAP]",)
    assert disks["sda"].seen() == (
        'sda 447.1G model "SAMSUNG MZ7LH480HAHQ-00005" serial S45PNA0M123456 wwn 0x5002538e40a1b2c3'
        " path pci-0000:00:17.0-ata-1 path pci-0000:00:17.0-ata-1.0"
    )


def test_the_default_refuses_two_equal_smallest_disks_and_says_what_it_saw():
    message = _refusal(DiskRule())
    assert message.startswith(
        "the default rule (the smallest usable disk) matches 2 disks (sda, sdb), refusing to guess: "
        "name one with serial, wwn or path in hosts[].disk; seen: sda 447.1G"
    )
    assert "sdc 14.3G" in message and "(removable)" in message
    assert "(holds a mounted filesystem: /boot/efi)" in message
    assert "sr0 1024M" in message and "(not a disk (rom))" in message
    assert "zram0 4G (in RAM, not a disk)" in message
    assert "nvme0n1 3.5T" in message


def test_the_default_takes_the_smallest_usable_disk_not_the_stick_nor_the_mounted_one():
    disks = [d for d in _server() if d.name != "sdb"]
    assert choose(disks, DiskRule(), IMAGE).name == "sda"


def test_the_default_skips_a_disk_smaller_than_the_image():
    disks = [d for d in _server() if d.name not in ("sda", "sdb")]
    assert choose(disks, DiskRule(), IMAGE).name == "nvme0n1"
    assert "no disk fits" in _refusal(DiskRule(), disks, image=4 << 40)
    assert "(smaller than the image (4T))" in _refusal(DiskRule(), disks, image=4 << 40)


@pytest.mark.parametrize(
    ("rule", "picked"),
    [
        (DiskRule(serial="S45PNA0M123457"), "sdb"),
        (DiskRule(wwn="0x5002538E40A1B2C3"), "sda"),
        (DiskRule(wwn="naa.5002538e40a1b2c4"), "sdb"),
        (DiskRule(wwn="wwn-0x5002538e40a1b2c4"), "sdb"),
        (DiskRule(path="pci-0000:00:17.0-ata-2"), "sdb"),
        (DiskRule(path="pci-0000:00:17.0-ata-1.*"), "sda"),
        (DiskRule(model="SAMSUNG MZQL*"), "nvme0n1"),
        (DiskRule(min_size=1 << 40), "nvme0n1"),
        (DiskRule(model="SAMSUNG MZ7LH480*", serial="S45PNA0M123456"), "sda"),
        (DiskRule(name="nvme0n1"), "nvme0n1"),
    ],
)
def test_a_rule_picks_the_one_disk_it_matches(rule: DiskRule, picked: str):
    assert choose(_server(), rule, IMAGE).name == picked


def test_a_rule_matching_two_disks_is_refused():
    message = _refusal(DiskRule(model="SAMSUNG MZ7LH480*", max_size=500 * GIB))
    assert message.startswith(
        'the rule max_size 500G, model "SAMSUNG MZ7LH480*" matches 2 disks (sda, sdb), refusing to guess: '
        "narrow the rule with serial, wwn or path in hosts[].disk; seen: "
    )
    assert "nvme0n1 3.5T" in message and "(does not match)" in message


def test_a_rule_matching_nothing_lists_every_disk():
    message = _refusal(DiskRule(serial="NOSUCHSERIAL"))
    assert message.startswith("no disk fits the rule serial NOSUCHSERIAL; seen: sda 447.1G")
    assert message.count("(does not match)") == 3  # sda, sdb, nvme0n1; the others are not usable anyway


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        (
            DiskRule(name="sdc"),
            'sdc 14.3G model "Ultra Fit" serial 4C530001230822112473 path pci-0000:00:14.0-usb-0:4:1.0-scsi-0:0:0:0'
            " (removable)",
        ),
        (DiskRule(serial="PHYF9123004L240AGN"), "(holds a mounted filesystem: /boot/efi)"),
        (DiskRule(name="sr0"), "(not a disk (rom))"),
    ],
)
def test_no_rule_can_take_a_removable_mounted_or_non_disk_device(rule: DiskRule, why: str):
    message = _refusal(rule)
    assert message.startswith("no disk fits the rule") and why in message


def test_the_only_disk_of_this_vm_holds_its_root_so_it_is_refused():
    # this machine's own lsblk: a virtio disk holding / and a zram swap device of size 0
    doc = {
        "blockdevices": [
            _disk("zram0", 0, None, None, None),
            _disk("vda", 274877906944, None, None, None, mountpoints=["/run/netns", "/"]),
        ]
    }
    message = _refusal(DiskRule(), disks_from_lsblk(doc))
    assert message == (
        "no disk fits the default rule (the smallest usable disk); seen: zram0 0B (in RAM, not a disk); "
        "vda 256G (holds a mounted filesystem: /run/netns, /)"
    )


def test_older_lsblk_output_is_read_too():
    # util-linux 2.32 (and lsblk -P turned JSON by hand): flags and sizes as strings, MOUNTPOINT singular
    doc = {
        "blockdevices": [
            {
                "name": "sda",
                "size": "500107862016",
                "type": "disk",
                "rm": "0",
                "ro": "0",
                "model": "ST500DM002-1BD14 ",
                "serial": "Z3T1ABCD",
                "wwn": None,
                "mountpoint": None,
            },
            {
                "name": "sdb",
                "size": "8053063680",
                "type": "disk",
                "rm": "1",
                "ro": "0",
                "model": "Cruzer",
                "serial": None,
                "wwn": None,
                "mountpoint": "/media/usb",
            },
        ]
    }
    sda, sdb = disks_from_lsblk(doc)
    assert (sda.size, sda.removable, sda.model, sda.mounted) == (500107862016, False, "ST500DM002-1BD14", ())
    assert (sdb.removable, sdb.mounted) == (True, ("/media/usb",))
    assert choose([sda, sdb], DiskRule(), IMAGE).name == "sda"


def test_what_is_not_lsblk_output_is_a_value_error():
    doc: dict
    for doc in (
        {},
        {"blockdevices": {}},
        {"blockdevices": [{"size": 1}]},
        {"blockdevices": [{"name": "sda", "size": "1G"}]},
    ):
        with pytest.raises(ValueError):
            disks_from_lsblk(doc)


def test_a_refusal_stays_short_enough_for_an_event_however_many_disks():
    doc = {
        "blockdevices": [
            _disk(f"sd{i:03}", 8 << 40, "HGST HUH721008AL5200", f"SERIAL{i:014}", f"0x5000cca2{i:08x}")
            for i in range(90)
        ]
    }
    message = _refusal(DiskRule(), disks_from_lsblk(doc))
    assert len(message) <= 3500 and message.endswith("; ... (more disks, cut)")
    assert message.startswith("the default rule (the smallest usable disk) matches 90 disks")


@pytest.mark.parametrize(
    ("devpath", "names"),
    [
        ("/devices/pci0000:00/0000:00:04.0/virtio1/block/vda", ("pci-0000:00:04.0",)),
        ("/devices/pci0000:5d/0000:5d:02.0/0000:5e:00.0/nvme/nvme0/nvme0n1", ("pci-0000:5e:00.0-nvme-1",)),
        (
            "/devices/pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block/sdb",
            ("pci-0000:00:17.0-ata-2", "pci-0000:00:17.0-ata-2.0"),
        ),
        (
            "/devices/pci0000:00/0000:00:05.0/virtio2/host2/target2:0:3:0/2:0:3:0/block/sda",
            ("pci-0000:00:05.0-scsi-0:0:3:0",),
        ),
        ("/devices/virtual/block/zram0", ()),
        ("/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1", ()),
    ],
)
def test_by_path_names_from_the_sysfs_path(devpath: str, names: tuple[str, ...]):
    assert path_ids(devpath) == names


def test_an_ata_disk_is_named_by_its_port_on_its_controller():
    # the second AHCI controller's first port is ata7 to the kernel, ata-1 to udev
    assert path_ids("/devices/pci0000:00/0000:00:11.4/ata7/host6/target6:0:0/6:0:0:0/block/sdg", ata_port=1)[0] == (
        "pci-0000:00:11.4-ata-1"
    )


def test_raid1_by_default_mirrors_the_two_smallest_usable_disks():
    assert [d.name for d in targets(_server(), DiskRule(raid=1), IMAGE)] == ["sda", "sdb"]


def test_raid1_with_keys_needs_exactly_two_matching_disks():
    pair = DiskRule(model="SAMSUNG MZ7LH480*", raid=1)
    assert [d.name for d in targets(_server(), pair, IMAGE)] == ["sda", "sdb"]
    with pytest.raises(NoDisk) as one:
        targets(_server(), DiskRule(serial="S45PNA0M123456", raid=1), IMAGE)
    assert str(one.value).startswith(
        "the rule serial S45PNA0M123456, raid 1 needs 2 disks and only sda fits; seen: sda 447.1G"
    )
    with pytest.raises(NoDisk) as three:
        targets(_server(), DiskRule(min_size=100 * GIB, raid=1), IMAGE)
    assert "matches 3 disks (sda, sdb, nvme0n1), refusing to guess" in str(three.value)


def test_raid1_by_default_refuses_when_a_third_disk_ties_with_the_second():
    disks = _server()
    sda = next(d for d in disks if d.name == "sda")
    third = replace(sda, name="sde", serial="S45PNA0M123458", wwn="", by_path=())
    with pytest.raises(NoDisk) as refused:
        targets([*disks, third], DiskRule(raid=1), IMAGE)
    assert str(refused.value).startswith(
        "the default rule (the two smallest usable disks, raid 1) matches 3 disks (sda, sdb, sde), refusing to guess: "
        "name them with serial, wwn or path in hosts[].disk"
    )
    alone = [d for d in disks if d.name in ("sda", "sdc")]  # the stick is removable: one usable disk
    with pytest.raises(NoDisk) as short:
        targets(alone, DiskRule(raid=1), IMAGE)
    assert "needs 2 disks and only sda fits" in str(short.value)
