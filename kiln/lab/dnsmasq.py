"""dnsmasq in the lab namespace: DHCP with one static lease per host by MAC, iPXE pointed at /boot.ipxe, and
UEFI firmware's own PXE (Secure Boot: no iPXE) pointed at Debian's signed shim on kiln serve's TFTP listener.

No DNS (port 0) and no TFTP of its own: QEMU's NIC ROMs (Debian's ipxe-qemu) are iPXE already, so their boot file
is the server's HTTP URL; a UEFI client that is not iPXE (DHCP option 93, client architecture 7 or 9: x86-64 UEFI)
gets shimx64.efi from the server's address, where kiln serve answers TFTP (kiln/server/netboot.py). Hosts not in
roles.yaml get no lease.
"""

from __future__ import annotations

import time
from pathlib import Path

from kiln.fsutil import write_atomic
from kiln.lab import procs
from kiln.lab.layout import BRIDGE, Lab
from kiln.server.netboot import BOOT_FILE

NAME = "dnsmasq"


def config(lab: Lab) -> str:
    subnet = lab.cluster.network.subnet
    lines = [
        "# kiln lab: written by ./inv lab up",
        "port=0",
        f"interface={BRIDGE}",
        "bind-interfaces",
        "except-interface=lo",
        f"dhcp-range={subnet.network_address},static,{subnet.netmask},1h",
        f"dhcp-option=option:router,{lab.cluster.network.gateway}",
        "dhcp-option=option:dns-server," + ",".join(str(a) for a in lab.cluster.network.dns),
        "dhcp-authoritative",
        "dhcp-userclass=set:ipxe,iPXE",
        f"dhcp-boot=tag:ipxe,{lab.http_url}/boot.ipxe",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        f"dhcp-boot=tag:efi64,tag:!ipxe,{BOOT_FILE},,{lab.gateway}",
        f"dhcp-leasefile={lab.run / 'dnsmasq.leases'}",
        "log-dhcp",
    ]
    lines += [f"dhcp-host={h.mac},{h.ip},{h.name}" for h in lab.hosts]
    return "\n".join(lines) + "\n"


def argv(lab: Lab) -> list[str]:
    """dnsmasq's command line, its config (config()) written to the lab's run directory."""
    conf = lab.run / "dnsmasq.conf"
    write_atomic(conf, config(lab).encode())
    return [
        "dnsmasq",
        "--keep-in-foreground",
        "--log-facility=-",
        f"--conf-file={conf}",
        f"--pid-file={Path(lab.run / 'dnsmasq.real.pid')}",
    ]


def start(lab: Lab, settle: float = 1.0) -> int:
    """Start dnsmasq; an error in the first second (a bad option, the port taken, no binary) is raised here,
    not discovered minutes later as hosts that never get a lease."""
    command = argv(lab)
    log = lab.logs / "dnsmasq.log"
    pid = procs.start(NAME, command, lab.run, log)
    time.sleep(settle)
    if procs.pid_of(NAME, lab.run) is None:
        last = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise RuntimeError(f"dnsmasq exited at once: {' / '.join(last) or 'no output'} (log: {log})")
    return pid
