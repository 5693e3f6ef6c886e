"""The Debian packages each task needs on the machine running it, installed when missing.

`./inv TASK ...` calls this before Invoke runs the task: as root it installs what is missing
(apt-get update first, once); otherwise it prints the exact apt command and stops.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Config checkers and daemons the tests run for real; the tools behind render checks.
_CHECKERS = ("haproxy", "nginx", "keepalived", "nftables", "mariadb-server", "mariadb-client", "iproute2", "openssl")

# diskimage-builder's host tools, the kpartx/dmsetup the stand-in replaces on hosts without device-mapper,
# and what the PXE installer is assembled with (kernel and busybox come from apt-get download).
_IMAGE_BUILD = (
    "qemu-utils",
    "debootstrap",
    "debian-archive-keyring",
    "kpartx",
    "dmsetup",
    "gdisk",
    "fdisk",
    "squashfs-tools",
    "sudo",
    "dosfstools",
    "e2fsprogs",
    "util-linux",
    "kmod",
    "busybox-static",
    "wget",
    "curl",
    "xz-utils",
    "ca-certificates",
    "procps",
)
# The image tests: QEMU (TCG) boots and shellcheck for the elements' hooks.
_IMAGE_TEST = (*_IMAGE_BUILD, "qemu-system-x86", "shellcheck", "cpio", "systemd")

# The provisioning server's tests: the dashboard in a real headless browser, and its PostgreSQL state path.
_SERVER_TEST = ("chromium", "chromium-driver", "postgresql")

# Freezing the agent (PyInstaller reads binaries with objdump/ldd); its tests run the daemons in network namespaces,
# and the db join's exporter account is proven with the real exporter (no systemd here to start its service).
_FREEZE = ("binutils", "libc-bin")
_AGENT_TEST = (*_FREEZE, "util-linux", "procps", "prometheus-mysqld-exporter")

# ./inv db: backups (mariadb-backup, mbstream) taken over the transport, restored into a scratch server here
# (mariadbd, mariadb-binlog, the mariadb client); ssh reaches the db hosts.
_DB = ("mariadb-server", "mariadb-client", "mariadb-backup", "openssh-client")

# The lab: QEMU (TCG) with iPXE NIC ROMs, qcow2 overlays, dnsmasq's binary without its system service
# (dnsmasq-base: nothing listens outside the lab namespace), the ip tool and ssh for verify/chaos/audit.
_LAB = ("qemu-system-x86", "ipxe-qemu", "qemu-utils", "dnsmasq-base", "iproute2", "openssh-client")

PACKAGES: dict[str, tuple[str, ...]] = {
    "test": (*_CHECKERS, "fdisk", *_IMAGE_TEST, *_SERVER_TEST, *_AGENT_TEST, *_LAB, *_DB),
    "bench": (*_CHECKERS, "fdisk", *_IMAGE_BUILD),
    "upload-ami": ("fdisk",),  # sfdisk reads the image's partition table to pick the boot mode
    "build": _IMAGE_BUILD,
    "build-all": _IMAGE_BUILD,
    "freeze": _FREEZE,
    "lab": _LAB,
    "db": _DB,
}


def task_of(argv: list[str]) -> str | None:
    """The task named on an invoke command line: the first word that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
        if arg in ("-l", "--list", "-h", "--help", "-V", "--version"):
            return None
    return None


def missing(packages: tuple[str, ...]) -> list[str]:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def ensure(task: str | None) -> int:
    needed = PACKAGES.get((task or "").replace("_", "-"), ())
    if not needed:
        return 0
    absent = missing(needed)
    if not absent:
        return 0
    command = ["apt-get", "install", "-y", "--no-install-recommends", *absent]
    if os.geteuid() != 0:
        print(f"./inv {task} needs Debian packages that are missing: {' '.join(absent)}", file=sys.stderr)
        print(f"install them with:\n  sudo apt-get update && sudo {' '.join(command)}", file=sys.stderr)
        return 1
    print(f"installing Debian packages for '{task}': {' '.join(absent)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return 0


def main(argv: list[str]) -> int:
    try:
        return ensure(task_of(argv))
    except subprocess.CalledProcessError as e:
        print(f"installing packages failed: {' '.join(e.cmd)} exited {e.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
