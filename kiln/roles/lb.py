"""lb: HAProxy load balancers that terminate TLS on a keepalived VIP and forward to the web pool."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln import bundle as b
from kiln.model.cluster import Cluster, Host
from kiln.model.meaning import Facts, Found
from kiln.monitoring import TEXTFILE_DIR
from kiln.roles import web
from kiln.roles.context import HostContext, Peer
from kiln.roles.spec import DirSpec, FileSpec, Firewall, Need, RoleSpec, Rule, SecretSpec, ServiceSpec, typed_settings

NAME = "lb"
STATS_PORT = 8404  # HAProxy's stats page and Prometheus endpoint, on the host address (admin network)
READY_PORT = 8405  # loopback: 200 while HAProxy sees a web node UP; keepalived follows it
READY_SCRIPT = "/etc/keepalived/haproxy-ready"
PREEMPT_DELAY = 10  # seconds a returning higher-priority LB waits (its readiness check passing) before it preempts
TLS_PEM = "/etc/haproxy/certs/site.pem"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
# Whether this LB holds the VIP, for the node exporter's textfile collector (kiln_keepalived_vrrp_state): run by
# keepalived's notify at each transition and by a timer (docs/monitoring.md)
VRRP_STATE_SCRIPT = "/usr/local/sbin/kiln-vrrp-state"
VRRP_STATE_SERVICE = "/etc/systemd/system/kiln-vrrp-state.service"
VRRP_STATE_TIMER = "/etc/systemd/system/kiln-vrrp-state.timer"
VRRP_STATE_EVERY = "60s"


@dataclass(frozen=True)
class LbSettings:
    balance: str
    virtual_router_id: int


def settings_of(cluster: Cluster) -> LbSettings:
    return typed_settings(cluster, NAME, LbSettings)


def _context(cluster: Cluster, host: Host, c: HostContext) -> Mapping[str, Any]:
    settings = settings_of(cluster)
    lbs = cluster.by_role(NAME)
    spread = max(h.priority or 0 for h in lbs) - min(h.priority or 0 for h in lbs)
    peers = tuple(Peer(h.name, str(h.ip)) for h in lbs if h.name != host.name)
    return {
        "balance": settings.balance,
        "virtual_router_id": settings.virtual_router_id,
        "priority": host.priority,
        "preempt_delay": PREEMPT_DELAY,
        # lowers a not-ready LB below every ready one, never to FAULT: the VIP stays somewhere
        "not_ready_weight": -(spread + 1),
        "lb_peers": peers,
        "haproxy_stats_port": STATS_PORT,
        "haproxy_ready_port": READY_PORT,
        "haproxy_ready_script": READY_SCRIPT,
        "vrrp_instance": f"{cluster.name}_vip",
        "vrrp_state_script": VRRP_STATE_SCRIPT,
        "vrrp_state_every": VRRP_STATE_EVERY,
        "textfile_dir": TEXTFILE_DIR,
        "tls_pem": TLS_PEM,
        "web_health_path": web.HEALTH_PATH,
        "web_port": web.PORT,
    }


def _firewall(cluster: Cluster, host: Host, c: HostContext) -> Firewall:
    peers = ", ".join(str(h.ip) for h in cluster.by_role(NAME) if h.name != host.name)
    return Firewall(
        inbound=(Rule("tcp", (80, 443), daddr=c.vip), Rule("vrrp", saddr="$LB_PEERS", daddr=c.ip)),
        outbound=(Rule("vrrp", daddr="$LB_PEERS"),),
        admin_ports=(STATS_PORT,),
        defines=(("LB_PEERS", peers),),
    )


def _join(cluster: Cluster, host: Host, c: HostContext) -> b.Join:
    assert host.priority is not None
    return b.LbJoin(
        kind="lb",
        vip=c.vip,
        interface=c.interface,
        priority=host.priority,
        stats_url=f"http://{c.ip}:{STATS_PORT}/stats",
    )


def _checks(cluster: Cluster, host: Host, c: HostContext) -> tuple[b.Check, ...]:
    return (b.HttpCheck(kind="http", name="haproxy stats answer", url=f"http://{c.ip}:{STATS_PORT}/stats"),)


def _pair(facts: Facts) -> Found:
    lbs = facts.hosts_of(NAME)
    if len(lbs) < 2 and facts.raw_hosts:
        yield (
            "$.hosts",
            f"{len(lbs)} lb host{'s' if len(lbs) != 1 else ''}, the VIP needs a pair",
            "at least two hosts with role: lb",
        )


def _priority_missing(facts: Facts) -> Found:
    for i, h in facts.hosts_of(NAME):
        if "priority" not in h:
            yield f"$.hosts[{i}]", "lb host without a priority", "priority: 1..254, the highest is the VRRP master"


def _priority_duplicate(facts: Facts) -> Found:
    seen: dict[int, int] = {}
    for i, h in facts.hosts_of(NAME):
        prio = h.get("priority")
        if isinstance(prio, int) and not isinstance(prio, bool):
            if prio in seen:
                yield (
                    f"$.hosts[{i}].priority",
                    f"priority {prio} is also used by $.hosts[{seen[prio]}]",
                    "a distinct priority per lb host",
                )
            else:
                seen[prio] = i


ROLE = RoleSpec(
    name=NAME,
    summary="HAProxy load balancers sharing a keepalived VIP",
    settings_schema={
        "description": "HAProxy load balancers sharing the VIP with keepalived.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "balance": {
                "description": "HAProxy balancing algorithm.",
                "type": "string",
                "enum": ["roundrobin", "leastconn"],
                "default": "roundrobin",
            },
            "virtual_router_id": {
                "description": "VRRP virtual router id, unique on the network segment.",
                "type": "integer",
                "minimum": 1,
                "maximum": 255,
                "default": 51,
            },
        },
    },
    settings=lambda s: LbSettings(**s),
    host_keys={
        "priority": {
            "description": "lb only: VRRP priority; the highest is the MASTER. Distinct per lb host.",
            "type": "integer",
            "minimum": 1,
            "maximum": 254,
        },
    },
    context=_context,
    join=_join,
    checks=_checks,
    firewall=_firewall,
    elements=("kiln-lb",),
    lab_memory_mib=512,
    files=(
        FileSpec(
            HAPROXY_CFG,
            "haproxy.cfg.j2",
            mode="0640",
            group="haproxy",
            check=("haproxy", "-c", "-f", HAPROXY_CFG),
        ),
        FileSpec(
            KEEPALIVED_CONF,
            "keepalived.conf.j2",
            mode="0640",
            check=("keepalived", "--config-test", f"--use-file={KEEPALIVED_CONF}"),
        ),
        FileSpec(READY_SCRIPT, "haproxy-ready.j2", mode="0755"),  # root's: enable_script_security
        FileSpec(VRRP_STATE_SCRIPT, "kiln-vrrp-state.j2", mode="0755"),  # root's too: keepalived's notify runs it
        FileSpec(VRRP_STATE_SERVICE, "kiln-vrrp-state.service.j2"),
        FileSpec(VRRP_STATE_TIMER, "kiln-vrrp-state.timer.j2"),
        FileSpec("/etc/sysctl.d/60-kiln-lb.conf", "sysctl-lb.conf.j2"),
    ),
    directories=(DirSpec("/etc/haproxy/certs", mode="0700"),),
    secrets=(SecretSpec("tls_pem", TLS_PEM),),
    services=(
        ServiceSpec("haproxy.service", (HAPROXY_CFG, TLS_PEM)),
        ServiceSpec("keepalived.service", (KEEPALIVED_CONF, READY_SCRIPT, VRRP_STATE_SCRIPT)),
        ServiceSpec("kiln-vrrp-state.timer", (VRRP_STATE_SERVICE, VRRP_STATE_TIMER)),
    ),
    needs=(Need("web", "the load balancers forward to web hosts"),),
    meaning=(
        ("lb-pair", _pair),
        ("lb-priority-missing", _priority_missing),
        ("lb-priority-duplicate", _priority_duplicate),
    ),
)
