"""What every host gets whatever its role: name, network, firewall, node exporter, the secrets directory."""

from __future__ import annotations

from dataclasses import replace

from kiln import bundle as b
from kiln import freeze
from kiln.model.cluster import Host
from kiln.roles import networkd
from kiln.roles.context import NODE_EXPORTER_PORT, SECRETS_DIR, HostContext
from kiln.roles.spec import DirSpec, FileSpec, ServiceSpec

NFTABLES_CONF = "/etc/nftables.conf"
# the tiers' addresses as nftables defines, the same on every host: nftables.conf includes it (include path /etc)
TIER_SETS = "/etc/nftables.d/kiln-tiers.nft"
NETWORK_FILE = networkd.NETWORK_FILE
NODE_EXPORTER_DEFAULT = "/etc/default/prometheus-node-exporter"
SUDOERS_ADMIN = "/etc/sudoers.d/60-kiln-admin"  # no '.' in the name: sudo skips such files in sudoers.d
NETWORKD = "systemd-networkd.service"
ELEMENTS = ("kiln-base", "kiln-firstboot")  # in every image, before the role's own

_NAMING = (FileSpec("/etc/hostname", "hostname.j2"), FileSpec("/etc/hosts", "hosts.j2", cluster_wide=True))
_REST = (
    FileSpec(TIER_SETS, "kiln-tiers.nft.j2", mode="0600", cluster_wide=True),
    FileSpec(NFTABLES_CONF, "nftables.conf.j2", mode="0700", check=("nft", "-c", "-f", NFTABLES_CONF)),
    FileSpec(NODE_EXPORTER_DEFAULT, "node-exporter.default.j2"),
    FileSpec(SUDOERS_ADMIN, "sudoers-admin.j2", mode="0440", check=("visudo", "-cf", SUDOERS_ADMIN)),
)
# Every host's files, with one NIC (hosts[].network adds or replaces networkd files: host_files)
FILES = (*_NAMING, *(f.spec for f in networkd.ONE_NIC), *_REST)
DIRECTORIES = (DirSpec(SECRETS_DIR, mode="0711"), DirSpec("/etc/nftables.d", mode="0700"))
SERVICES = (
    ServiceSpec(NETWORKD, (NETWORK_FILE,)),
    # the firewall step loads a changed ruleset in one transaction; the unit only loads it at boot (reloading it
    # too loaded the same ruleset twice, 10 s of a converge under emulation)
    ServiceSpec("nftables.service", ()),
    ServiceSpec("prometheus-node-exporter.service", (NODE_EXPORTER_DEFAULT,)),
)


def host_files(host: Host, c: HostContext) -> tuple[networkd.NetworkdFile, ...]:
    """FILES as this host has them: its networkd files (kiln/roles/networkd.py) in the place of the one-NIC pair.
    A NetworkdFile's `unit` (None for every file but networkd's own) is the template's `unit` value."""
    none = tuple(networkd.NetworkdFile(f, None) for f in _NAMING)
    return (*none, *networkd.files(host.network, c), *(networkd.NetworkdFile(f, None) for f in _REST))


def host_services(files: tuple[networkd.NetworkdFile, ...]) -> tuple[ServiceSpec, ...]:
    """SERVICES as this host has them: networkd reloads for any of its .network and .netdev files (host_files)."""
    mine = tuple(f.spec.path for f in files if f.spec.path.endswith((".network", ".netdev")))
    return tuple(replace(s, restart_on=mine) if s.unit == NETWORKD else s for s in SERVICES)


# What "node exporter answers" scrapes: one cheap collector (node_exporter's collect[] filter), which proves the
# exporter listens, is let through and collects. A whole scrape took 20 s on an idle emulated VM; a check retrying
# it every 15 s stacked scrapes the exporter kept computing until the VM did nothing else (lab, 2026-12-01).
NODE_EXPORTER_PROBE = "/metrics?collect%5B%5D=loadavg"


def checks(c: HostContext) -> tuple[b.Check, ...]:
    return (
        b.CommandCheck(kind="command", name="firewall loaded", argv=("nft", "list", "table", "inet", "filter")),
        b.HttpCheck(
            kind="http", name="node exporter answers", url=f"http://{c.ip}:{NODE_EXPORTER_PORT}{NODE_EXPORTER_PROBE}"
        ),
    )


def systemd_units(services: tuple[ServiceSpec, ...]) -> str:
    """node_exporter's --collector.systemd.unit-include: the host's own services and kiln's agent, `.` as `[.]` (no
    backslash to survive /etc/default's quoting). Its systemd collector asked D-Bus about every unit: 13 of a
    scrape's 17 s on an emulated VM."""
    agent = {u for u in freeze.UNITS if u.endswith(".service")}
    units = sorted({s.unit for s in services} | agent)
    return "(" + "|".join(u.replace(".", "[.]") for u in units) + ")"
