"""Everything a host's templates need, computed from the model in Python; templates only print it."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from kiln.model import Cluster, Host, Role

INTERFACE = "kiln0"  # the cluster NIC, renamed by MAC with a systemd .link file, so configs can name it
NODE_EXPORTER_PORT = 9100
HAPROXY_STATS_PORT = 8404
HAPROXY_READY_PORT = 8405  # loopback: 200 while HAProxy sees a web node UP; keepalived follows it
HAPROXY_READY_SCRIPT = "/etc/keepalived/haproxy-ready"
LB_PREEMPT_DELAY = 10  # seconds a returning higher-priority LB waits (its readiness check passing) before it preempts
NGINX_STATUS_PORT = 8081  # stub_status, loopback only
WEB_HEALTH_PATH = "/nginx-health"  # nginx answers it itself: what the load balancers check
MARIADB_PORT = 3306
REPLICATION_USER = "repl"
APP_DB_USER = "app"
# the Debian exporter unit runs as the OS user prometheus; MariaDB maps it to this account by unix_socket
EXPORTER_DB_USER = "prometheus"
MYSQLD_EXPORTER_PORT = 9104
NGINX_EXPORTER_PORT = 9113
TLS_PEM = "/etc/haproxy/certs/site.pem"
SECRETS_DIR = "/etc/kiln/secrets"
APP_ROOT = "/opt/kiln-app"


@dataclass(frozen=True)
class Peer:
    name: str
    ip: str


@dataclass(frozen=True)
class HostContext:
    # identity
    cluster: str
    domain: str
    name: str
    role: str
    mac: str
    ip: str
    interface: str
    # network
    prefix: int
    subnet: str
    gateway: str
    dns: tuple[str, ...]
    vip: str
    admin_nets: tuple[str, ...]
    provisioning_host: str
    provisioning_port: int
    hosts: tuple[Peer, ...]
    # tier peers
    lb_nodes: tuple[Peer, ...]
    web_nodes: tuple[Peer, ...]
    app_nodes: tuple[Peer, ...]
    db_nodes: tuple[Peer, ...]
    lb_peers: tuple[Peer, ...]  # the other lb hosts
    # the same as nftables set bodies ("a, b"); empty when the tier has no host
    admin_set: str
    lb_set: str
    web_set: str
    app_set: str
    db_set: str
    lb_peer_set: str
    # ports
    node_exporter_port: int
    role_exporter_ports: tuple[int, ...]
    admin_ports: str  # SSH aside, what the admin network reaches: the exporters, as an nftables set body
    inbound_ports: tuple[int, ...]  # role ports the firewall opens, from the tier sources below
    # role settings (zero values where the role does not use them)
    balance: str = ""
    virtual_router_id: int = 0
    priority: int = 0
    preempt_delay: int = 0
    haproxy_stats_port: int = HAPROXY_STATS_PORT
    haproxy_ready_port: int = HAPROXY_READY_PORT
    haproxy_ready_script: str = HAPROXY_READY_SCRIPT
    not_ready_weight: int = 0  # lowers a not-ready LB below every ready one, never to FAULT: the VIP stays somewhere
    tls_pem: str = TLS_PEM
    static_root: str = ""
    nginx_status_port: int = NGINX_STATUS_PORT
    web_health_path: str = WEB_HEALTH_PATH
    nginx_exporter_port: int = NGINX_EXPORTER_PORT
    app_port: int = 0
    app_workers: int = 0
    app_root: str = APP_ROOT
    database: str = ""
    db_write_host: str = ""
    db_read_host: str = ""
    db_port: int = MARIADB_PORT
    app_db_user: str = APP_DB_USER
    exporter_db_user: str = EXPORTER_DB_USER
    mysqld_exporter_port: int = MYSQLD_EXPORTER_PORT
    secrets_dir: str = SECRETS_DIR
    server_id: int = 0
    is_replica: bool = False


def _peers(hosts: tuple[Host, ...]) -> tuple[Peer, ...]:
    return tuple(Peer(h.name, str(h.ip)) for h in hosts)


@dataclass(frozen=True)
class ClusterView:
    """Cluster-wide values every host's context shares; computed once per render, not once per host."""

    hosts: tuple[Peer, ...]
    tiers: dict[Role, tuple[Peer, ...]]
    tier_sets: dict[Role, str]  # "a, b, c": the tier's addresses as an nftables set body
    db_primary: Host | None
    db_replicas: tuple[Host, ...]


def cluster_view(cluster: Cluster) -> ClusterView:
    tiers = {r: _peers(cluster.by_role(r)) for r in Role}
    return ClusterView(
        hosts=_peers(cluster.hosts),
        tiers=tiers,
        tier_sets={r: ", ".join(p.ip for p in peers) for r, peers in tiers.items()},
        db_primary=cluster.db_primary,
        db_replicas=cluster.db_replicas,
    )


def build_context(cluster: Cluster, host: Host, view: ClusterView | None = None) -> HostContext:
    view = view or cluster_view(cluster)
    net = cluster.network
    url = urlsplit(cluster.provisioning_url)
    lbs = cluster.by_role(Role.lb)
    lb_peers = tuple(p for p in view.tiers[Role.lb] if p.name != host.name) if host.role is Role.lb else ()
    role_exporter_ports = {
        Role.lb: (HAPROXY_STATS_PORT,),
        Role.web: (NGINX_EXPORTER_PORT,),
        Role.app: (),
        Role.db: (MYSQLD_EXPORTER_PORT,),
    }[host.role]
    base = dict(
        cluster=cluster.name,
        domain=cluster.domain,
        name=host.name,
        role=host.role.value,
        mac=host.mac,
        ip=str(host.ip),
        interface=INTERFACE,
        prefix=net.subnet.prefixlen,
        subnet=str(net.subnet),
        gateway=str(net.gateway),
        dns=tuple(str(a) for a in net.dns),
        vip=str(net.vip),
        admin_nets=tuple(str(a) for a in net.admin),
        provisioning_host=url.hostname or "",
        provisioning_port=url.port or (443 if url.scheme == "https" else 80),
        hosts=view.hosts,
        lb_nodes=view.tiers[Role.lb],
        web_nodes=view.tiers[Role.web],
        app_nodes=view.tiers[Role.app],
        db_nodes=view.tiers[Role.db],
        lb_peers=lb_peers,
        admin_set=", ".join(str(a) for a in net.admin),
        lb_set=view.tier_sets[Role.lb],
        web_set=view.tier_sets[Role.web],
        app_set=view.tier_sets[Role.app],
        db_set=view.tier_sets[Role.db],
        lb_peer_set=", ".join(p.ip for p in lb_peers),
        node_exporter_port=NODE_EXPORTER_PORT,
        role_exporter_ports=role_exporter_ports,
        admin_ports=", ".join(str(p) for p in (NODE_EXPORTER_PORT, *role_exporter_ports)),
        inbound_ports=(),
    )
    if host.role is Role.lb:
        assert cluster.lb is not None and host.priority is not None
        spread = max(h.priority or 0 for h in lbs) - min(h.priority or 0 for h in lbs)
        base.update(
            not_ready_weight=-(spread + 1),
            balance=cluster.lb.balance,
            virtual_router_id=cluster.lb.virtual_router_id,
            priority=host.priority,
            preempt_delay=LB_PREEMPT_DELAY,
            inbound_ports=(80, 443),
        )
    elif host.role is Role.web:
        assert cluster.web is not None and cluster.app is not None
        base.update(static_root=cluster.web.static_root, app_port=cluster.app.port, inbound_ports=(80,))
    elif host.role is Role.app:
        assert cluster.app is not None and cluster.db is not None
        primary = view.db_primary
        replicas = view.db_replicas
        assert primary is not None
        # Reads spread over replicas by the app host's position; writes always go to the primary.
        read_host = replicas[host.index % len(replicas)] if replicas else primary
        base.update(
            app_port=cluster.app.port,
            app_workers=cluster.app.workers,
            database=cluster.db.database,
            db_write_host=str(primary.ip),
            db_read_host=str(read_host.ip),
            inbound_ports=(cluster.app.port,),
        )
    elif host.role is Role.db:
        assert cluster.db is not None
        base.update(
            database=cluster.db.database,
            server_id=host.index + 1,
            is_replica=not host.is_primary,
            inbound_ports=(MARIADB_PORT,),
        )
    return HostContext(**base)  # type: ignore[arg-type]
