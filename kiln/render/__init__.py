"""Render every host's bundle from the cluster model: configs, secrets by reference, services, join, checks."""

from __future__ import annotations

from dataclasses import fields
from functools import cache
from typing import Any

import jinja2

from kiln.bundle import BUNDLE_SCHEMA
from kiln.model import Cluster, Host, Role
from kiln.render import context as ctx
from kiln.render.context import ClusterView, HostContext, build_context, cluster_view
from kiln.render.files import DIRECTORIES, FILES, SECRETS, SERVICES, FileSpec


class RenderError(Exception):
    pass


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("kiln.render", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def template_vars(context: HostContext) -> dict[str, Any]:
    """The context's fields, shallow: nested peers stay objects (asdict would deep-copy them per template)."""
    return {f.name: getattr(context, f.name) for f in fields(context)}


def render_template(name: str, variables: dict[str, Any]) -> str:
    try:
        return _environment().get_template(name).render(variables)
    except jinja2.TemplateError as e:
        line = getattr(e, "lineno", None)
        raise RenderError(f"{name}{f':{line}' if line else ''}: {e}") from e


def render_cluster(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every host's unsigned bundle, by host name, with secrets referenced (value null)."""
    view, shared = cluster_view(cluster), {}
    return {h.name: render_host(cluster, h, view, shared) for h in cluster.hosts}


def render_host(
    cluster: Cluster, host: Host, view: ClusterView | None = None, shared: dict[str, str] | None = None
) -> dict[str, Any]:
    """One host's bundle. `view` and `shared` (contents of cluster-wide files) let a caller reuse work across hosts."""
    c = build_context(cluster, host, view)
    variables = template_vars(c)
    shared = {} if shared is None else shared
    role = host.role

    def content(spec: FileSpec) -> str:
        if not spec.cluster_wide:
            return render_template(spec.template, variables)
        if spec.template not in shared:
            shared[spec.template] = render_template(spec.template, variables)
        return shared[spec.template]

    files = [
        {"path": f.path, "mode": f.mode, "owner": f.owner, "group": f.group, "content": content(f)}
        for f in FILES
        if f.roles is None or role in f.roles
    ]
    directories = [
        {"path": d.path, "mode": d.mode, "owner": d.owner, "group": d.group}
        for d in DIRECTORIES
        if d.roles is None or role in d.roles
    ]
    secrets = [
        {"name": s.name, "path": s.path, "mode": s.mode, "owner": s.owner, "group": s.group, "value": None}
        for s in SECRETS
        if role in s.roles and (s.db_role is None or s.db_role == host.db_role)
    ]
    services = [
        {"unit": s.unit, "enable": True, "restart_on": list(s.restart_on)}
        for s in SERVICES
        if s.roles is None or role in s.roles
    ]
    return {
        "schema": BUNDLE_SCHEMA,
        "cluster": cluster.name,
        "host": {
            "name": host.name,
            "role": role.value,
            "mac": host.mac,
            "ip": str(host.ip),
            "fqdn": f"{host.name}.{cluster.name}",
        },
        "network": {
            "interface": ctx.INTERFACE,
            "address": str(host.ip),
            "prefix": cluster.network.subnet.prefixlen,
            "gateway": str(cluster.network.gateway),
            "dns": [str(a) for a in cluster.network.dns],
            "vip": str(cluster.network.vip),
        },
        "directories": directories,
        "files": files,
        "secrets": secrets,
        "services": services,
        "join": _join(cluster, host, c),
        "checks": _checks(host, c),
    }


def _join(cluster: Cluster, host: Host, c: HostContext) -> dict[str, Any]:
    if host.role is Role.lb:
        return {"kind": "lb", "params": {
            "vip": c.vip, "interface": c.interface, "priority": c.priority,
            "web_pool": [f"{w.ip}:80" for w in c.web_nodes], "stats_url": f"http://{c.ip}:{c.haproxy_stats_port}/stats",
        }}  # fmt: skip
    if host.role is Role.web:
        return {"kind": "web", "params": {
            "app_pool": [f"{a.ip}:{c.app_port}" for a in c.app_nodes], "health_url": f"http://{c.ip}/health",
        }}  # fmt: skip
    if host.role is Role.app:
        return {"kind": "app", "params": {
            "health_url": f"http://{c.ip}:{c.app_port}/health", "db_host": c.db_write_host, "db_port": c.db_port,
        }}  # fmt: skip
    primary = cluster.db_primary
    assert primary is not None
    common = {
        "database": c.database, "port": c.db_port, "replication_user": ctx.REPLICATION_USER,
        "app_user": ctx.APP_DB_USER, "server_id": c.server_id,
    }  # fmt: skip
    if host.is_primary:
        return {"kind": "db-primary", "params": {
            **common,
            "replica_hosts": [str(h.ip) for h in cluster.db_replicas],
            "app_hosts": [str(h.ip) for h in cluster.by_role(Role.app)],
            "exporter_user": ctx.EXPORTER_DB_USER,
        }}  # fmt: skip
    return {"kind": "db-replica", "params": {**common, "primary": str(primary.ip), "wait_seconds": 900}}


def _checks(host: Host, c: HostContext) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = [
        {"name": "firewall loaded", "kind": "command", "argv": ["nft", "list", "table", "inet", "filter"]},
        {"name": "node exporter answers", "kind": "http", "url": f"http://{c.ip}:{c.node_exporter_port}/metrics"},
    ]
    if host.role is Role.lb:
        checks.append(
            {"name": "haproxy stats answer", "kind": "http", "url": f"http://{c.ip}:{c.haproxy_stats_port}/stats"}
        )
    elif host.role is Role.web:
        checks.append({"name": "app pool answers through nginx", "kind": "http", "url": f"http://{c.ip}/health"})
    elif host.role is Role.app:
        checks.append(
            {"name": "app healthy with its database", "kind": "http", "url": f"http://{c.ip}:{c.app_port}/health"}
        )
    else:
        checks.append({"name": "mariadb accepts connections", "kind": "tcp", "host": c.ip, "port": c.db_port})
        checks.append({"name": "mysqld exporter answers", "kind": "http",
                       "url": f"http://{c.ip}:{c.mysqld_exporter_port}/metrics"})  # fmt: skip
    return checks
