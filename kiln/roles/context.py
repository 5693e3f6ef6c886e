"""What every host's templates get whatever its role, computed from the model once per cluster and per host."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from kiln.model.cluster import Cluster, Host

INTERFACE = "kiln0"  # the cluster NIC, renamed by MAC with a systemd .link file, so configs can name it
NODE_EXPORTER_PORT = 9100
SECRETS_DIR = "/etc/kiln/secrets"
SUDO_IOLOG_DIR = "/var/log/sudo-io"  # sudo's session recordings (sudoreplay -d DIR)


@dataclass(frozen=True)
class Peer:
    name: str
    ip: str


@dataclass(frozen=True)
class ClusterView:
    """Cluster-wide values every host's context shares; computed once per render, not once per host."""

    hosts: tuple[Peer, ...]
    nodes: Mapping[str, tuple[Peer, ...]]  # by role, in roles.yaml order: who serves (load balancer and proxy pools)
    access: Mapping[str, tuple[Peer, ...]]  # by role: who may connect (firewall sets, database grants)
    provisioning_host: str
    provisioning_port: int


def cluster_view(cluster: Cluster, roles: tuple[str, ...], retiring: tuple[Host, ...] = ()) -> ClusterView:
    """`retiring`: hosts leaving the cluster, drained first: out of every pool, still allowed in (their requests in
    flight finish; the next generation removes them)."""
    url = urlsplit(cluster.provisioning_url)
    serving = {r: tuple(Peer(h.name, str(h.ip)) for h in cluster.by_role(r)) for r in roles}
    leaving = {r: tuple(Peer(h.name, str(h.ip)) for h in retiring if h.role == r) for r in roles}
    return ClusterView(
        hosts=tuple(Peer(h.name, str(h.ip)) for h in (*cluster.hosts, *retiring)),
        nodes=serving,
        access={r: serving[r] + leaving[r] for r in roles},
        provisioning_host=url.hostname or "",
        provisioning_port=url.port or (443 if url.scheme == "https" else 80),
    )


@dataclass(frozen=True)
class HostContext:
    """The values common to every role; a role module adds its own next to them."""

    cluster: str
    domain: str
    name: str
    role: str
    mac: str
    ip: str
    interface: str
    prefix: int
    subnet: str
    gateway: str
    dns: tuple[str, ...]
    vip: str
    admin_nets: tuple[str, ...]
    provisioning_host: str
    provisioning_port: int
    hosts: tuple[Peer, ...]
    nodes: Mapping[str, tuple[Peer, ...]]  # who serves, by role
    access: Mapping[str, tuple[Peer, ...]]  # who may connect, by role (the serving and the retiring)
    admin_user: str  # the operators' account (roles.yaml access.admin_user)
    node_exporter_port: int = NODE_EXPORTER_PORT
    secrets_dir: str = SECRETS_DIR
    sudo_iolog_dir: str = SUDO_IOLOG_DIR


def host_context(cluster: Cluster, host: Host, view: ClusterView) -> HostContext:
    net = cluster.network
    return HostContext(
        cluster=cluster.name,
        domain=cluster.domain,
        name=host.name,
        role=host.role,
        mac=host.mac,
        ip=str(host.ip),
        interface=INTERFACE,
        prefix=net.subnet.prefixlen,
        subnet=str(net.subnet),
        gateway=str(net.gateway),
        dns=tuple(str(a) for a in net.dns),
        vip=str(net.vip),
        admin_nets=tuple(str(a) for a in net.admin),
        provisioning_host=view.provisioning_host,
        provisioning_port=view.provisioning_port,
        hosts=view.hosts,
        nodes=view.nodes,
        access=view.access,
        admin_user=cluster.access.admin_user,
    )
