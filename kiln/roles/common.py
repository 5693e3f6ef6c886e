"""What every host gets whatever its role: name, network, firewall, node exporter, the secrets directory."""

from __future__ import annotations

from kiln import bundle as b
from kiln.roles.context import NODE_EXPORTER_PORT, SECRETS_DIR, HostContext
from kiln.roles.spec import DirSpec, FileSpec, ServiceSpec

NFTABLES_CONF = "/etc/nftables.conf"
# the tiers' addresses as nftables defines, the same on every host: nftables.conf includes it (include path /etc)
TIER_SETS = "/etc/nftables.d/kiln-tiers.nft"
NETWORK_FILE = "/etc/systemd/network/10-kiln0.network"
NODE_EXPORTER_DEFAULT = "/etc/default/prometheus-node-exporter"
ELEMENTS = ("kiln-base", "kiln-firstboot")  # in every image, before the role's own

FILES = (
    FileSpec("/etc/hostname", "hostname.j2"),
    FileSpec("/etc/hosts", "hosts.j2", cluster_wide=True),
    FileSpec("/etc/systemd/network/10-kiln0.link", "kiln0.link.j2"),
    FileSpec(NETWORK_FILE, "kiln0.network.j2"),
    FileSpec(TIER_SETS, "kiln-tiers.nft.j2", mode="0600", cluster_wide=True),
    FileSpec(NFTABLES_CONF, "nftables.conf.j2", mode="0700", check=("nft", "-c", "-f", NFTABLES_CONF)),
    FileSpec(NODE_EXPORTER_DEFAULT, "node-exporter.default.j2"),
)
DIRECTORIES = (DirSpec(SECRETS_DIR, mode="0711"), DirSpec("/etc/nftables.d", mode="0700"))
SERVICES = (
    ServiceSpec("systemd-networkd.service", (NETWORK_FILE,)),
    ServiceSpec("nftables.service", (NFTABLES_CONF, TIER_SETS)),
    ServiceSpec("prometheus-node-exporter.service", (NODE_EXPORTER_DEFAULT,)),
)


def checks(c: HostContext) -> tuple[b.Check, ...]:
    return (
        b.CommandCheck(kind="command", name="firewall loaded", argv=("nft", "list", "table", "inet", "filter")),
        b.HttpCheck(kind="http", name="node exporter answers", url=f"http://{c.ip}:{NODE_EXPORTER_PORT}/metrics"),
    )
