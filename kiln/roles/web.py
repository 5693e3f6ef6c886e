"""web: nginx web servers that serve static files and proxy to the app pool; only the load balancers reach them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln import bundle as b
from kiln.model.cluster import Cluster, Host
from kiln.roles import app
from kiln.roles.context import HostContext
from kiln.roles.spec import DirSpec, FileSpec, Firewall, Need, RoleSpec, Rule, ServiceSpec, typed_settings

NAME = "web"
PORT = 80
HEALTH_PATH = "/nginx-health"  # nginx answers it itself: what the load balancers check
STATUS_PORT = 8081  # stub_status, loopback only
EXPORTER_PORT = 9113
NGINX_CONF = "/etc/nginx/nginx.conf"
SITE_CONF = "/etc/nginx/conf.d/kiln-site.conf"
APP_POOL_CONF = "/etc/nginx/conf.d/kiln-app-pool.conf"  # the upstream block, the same on every web host


@dataclass(frozen=True)
class WebSettings:
    static_root: str


def settings_of(cluster: Cluster) -> WebSettings:
    return typed_settings(cluster, NAME, WebSettings)


def _context(cluster: Cluster, host: Host, c: HostContext) -> Mapping[str, Any]:
    return {
        "static_root": settings_of(cluster).static_root,
        "app_port": app.settings_of(cluster).port,
        "web_health_path": HEALTH_PATH,
        "nginx_status_port": STATUS_PORT,
        "nginx_exporter_port": EXPORTER_PORT,
    }


def _firewall(cluster: Cluster, host: Host, c: HostContext) -> Firewall:
    return Firewall(
        inbound=(Rule("tcp", (PORT,), saddr="$LB_NODES"),),
        outbound=(Rule("tcp", (app.settings_of(cluster).port,), daddr="$APP_NODES"),),
        admin_ports=(EXPORTER_PORT,),
    )


def _join(cluster: Cluster, host: Host, c: HostContext) -> b.Join:
    apps = len(c.nodes["app"])  # a count, not the list: every web host's bundle would carry every app host
    return b.ServiceJoin(
        kind="service",
        process="nginx",
        unit="nginx.service",
        health_url=f"http://{c.ip}/health",
        what=f"nginx answers /health through the app pool ({apps} app host{'s' if apps != 1 else ''})",
    )


def _checks(cluster: Cluster, host: Host, c: HostContext) -> tuple[b.Check, ...]:
    return (b.HttpCheck(kind="http", name="app pool answers through nginx", url=f"http://{c.ip}/health"),)


ROLE = RoleSpec(
    name=NAME,
    summary="nginx web servers in front of the app pool",
    settings_schema={
        "description": "nginx web servers in front of the app pool.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "static_root": {
                "description": "Directory nginx serves static files from.",
                "$ref": "#/$defs/path",  # path-safe: it is nginx's `root`, where a `$variable` would be expanded
                "default": "/srv/www",
            },
        },
    },
    settings=lambda s: WebSettings(**s),
    context=_context,
    join=_join,
    checks=_checks,
    firewall=_firewall,
    elements=("kiln-web",),
    lab_memory_mib=512,
    files=(
        FileSpec(NGINX_CONF, "nginx.conf.j2", check=("nginx", "-t", "-q", "-c", NGINX_CONF)),
        FileSpec(SITE_CONF, "nginx-site.conf.j2"),
        FileSpec(APP_POOL_CONF, "nginx-app-pool.conf.j2", cluster_wide=True),
        FileSpec("/etc/default/prometheus-nginx-exporter", "nginx-exporter.default.j2"),
    ),
    directories=(DirSpec("/var/cache/nginx/kiln", mode="0700", owner="www-data", group="www-data"),),
    services=(
        ServiceSpec("nginx.service", (NGINX_CONF, SITE_CONF, APP_POOL_CONF)),
        ServiceSpec("prometheus-nginx-exporter.service", ("/etc/default/prometheus-nginx-exporter",)),
    ),
    needs=(Need("app", "nginx proxies to app hosts"),),
)
