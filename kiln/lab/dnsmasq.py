"""dnsmasq in the lab namespace: DHCP with one static lease per host by MAC, iPXE pointed at /boot.ipxe.

No DNS (port 0) and no TFTP: QEMU's NIC ROMs (Debian's ipxe-qemu) are iPXE already, so the boot file is
the server's HTTP URL. Hosts not in roles.yaml get no lease.
"""

from __future__ import annotations

import time
from pathlib import Path

from kiln.fsutil import write_atomic
from kiln.lab import procs
from kiln.lab.layout import BRIDGE, Lab

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
        f"dhcp-leasefile={lab.run / 'dnsmasq.leases'}",
        "log-dhcp",
    ]
    lines += [f"dhcp-host={h.mac},{h.ip},{h.name}" for h in lab.hosts]
    return "\n".join(lines) + "\n"


def start(lab: Lab, settle: float = 1.0) -> int:
    """Start dnsmasq; an error in the first second (a bad option, the port taken, no binary) is raised here,
    not discovered minutes later as hosts that never get a lease."""
    conf = lab.run / "dnsmasq.conf"
    write_atomic(conf, config(lab).encode())
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--log-facility=-",
        f"--conf-file={conf}",
        f"--pid-file={Path(lab.run / 'dnsmasq.real.pid')}",
    ]
    log = lab.logs / "dnsmasq.log"
    pid = procs.start(NAME, argv, lab.run, log)
    time.sleep(settle)
    if procs.pid_of(NAME, lab.run) is None:
        last = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise RuntimeError(f"dnsmasq exited at once: {' / '.join(last) or 'no output'} (log: {log})")
    return pid
