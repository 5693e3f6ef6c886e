"""Device-mapper or its stand-in: how DIB gets /dev/mapper/loopNpK partition devices on this host.

diskimage-builder partitions a loop device and asks `kpartx` (through `sudo`) to map the
partitions under /dev/mapper. Without device-mapper (`/dev/mapper/control` missing) kiln runs
DIB inside a private mount namespace in which kiln's stand-ins (standin/kpartx, standin/dmsetup:
kernel loop partitions via `partx`, linked under /dev/mapper) are bind-mounted over the real
binaries, so `sudo`'s secure_path finds them. Nothing on the host changes; a host with
device-mapper runs DIB as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

STANDIN = Path(__file__).resolve().parent / "standin"
CONTROL = Path("/dev/mapper/control")


def has_device_mapper(control: Path = CONTROL) -> bool:
    """The kernel's device-mapper answers on its control node (the node alone proves nothing: installing
    dmsetup creates it even on a kernel without the driver, where opening it fails with ENODEV)."""
    try:
        fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def wrap(argv: Sequence[str], *, standin: bool | None = None) -> list[str]:
    """`argv`, run with the stand-ins in front when device-mapper is missing (or when `standin` says so)."""
    if standin is None:
        standin = not has_device_mapper()
    if not standin:
        return list(argv)
    return ["unshare", "--mount", "--propagation", "private", "--", str(STANDIN / "enter"), *argv]


def remove_empty_mapper_dir(mapper: Path = CONTROL.parent) -> None:
    """The stand-in makes /dev/mapper for its links; remove it again once no build uses it."""
    try:
        mapper.rmdir()
    except OSError:
        pass  # missing, or not empty (the control node, or links of a build still running)
