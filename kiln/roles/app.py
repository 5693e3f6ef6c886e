"""app: the application under gunicorn; only the web tier reaches it, and it reaches the database."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import bundle as b
from kiln.model.cluster import Cluster, Host
from kiln.model.meaning import Facts, Found
from kiln.roles import db
from kiln.roles.context import NODE_EXPORTER_PORT, SECRETS_DIR, HostContext
from kiln.roles.spec import FileSpec, Firewall, Need, RoleSpec, Rule, SecretSpec, ServiceSpec, typed_settings

NAME = "app"
APP_ROOT = "/opt/kiln-app"
APP_ENV = "/etc/kiln/app.env"
APP_UNIT = "/etc/systemd/system/kiln-app.service"
PASSWORD_FILE = f"{SECRETS_DIR}/db_app_password"
# The app's metrics, summed over gunicorn's workers (kilnapp.gunicorn_conf), on the host address: the admin
# network reaches it, the web tier does not (it reaches the app's port, which has no /metrics).
METRICS_PORT = 9180


@dataclass(frozen=True)
class AppSettings:
    port: int
    workers: int


def settings_of(cluster: Cluster) -> AppSettings:
    return typed_settings(cluster, NAME, AppSettings)


def _context(cluster: Cluster, host: Host, c: HostContext) -> Mapping[str, Any]:
    settings = settings_of(cluster)
    primary = cluster.db_primary
    replicas = cluster.db_replicas
    assert primary is not None
    # Reads spread over replicas by the app host's name (not its place in the list); writes go to the writable one
    # of the db hosts, the named primary asked first (kilnapp.db: after a failover the app follows).
    read_host = replicas[zlib.crc32(host.name.encode()) % len(replicas)] if replicas else primary
    return {
        "app_port": settings.port,
        "app_workers": settings.workers,
        "app_metrics_port": METRICS_PORT,
        "app_root": APP_ROOT,
        "database": db.settings_of(cluster).database,
        "app_db_user": db.APP_USER,
        "db_write_host": str(primary.ip),
        "db_read_host": str(read_host.ip),
        "db_hosts": ",".join(str(h.ip) for h in (primary, *replicas)),
        "db_port": db.PORT,
    }


def _firewall(cluster: Cluster, host: Host, c: HostContext) -> Firewall:
    return Firewall(
        inbound=(Rule("tcp", (settings_of(cluster).port,), saddr="$WEB_NODES"),),
        outbound=(Rule("tcp", (db.PORT,), daddr="$DB_NODES"),),
        admin_ports=(METRICS_PORT,),
    )


def _join(cluster: Cluster, host: Host, c: HostContext) -> b.Join:
    primary = cluster.db_primary
    assert primary is not None
    return b.ServiceJoin(
        kind="service",
        process="gunicorn",
        unit="kiln-app.service",
        health_url=f"http://{c.ip}:{settings_of(cluster).port}/health",
        what=f"app healthy with its database {primary.ip}:{db.PORT}",
    )


def _checks(cluster: Cluster, host: Host, c: HostContext) -> tuple[b.Check, ...]:
    url = f"http://{c.ip}:{settings_of(cluster).port}/health"
    return (
        b.HttpCheck(kind="http", name="app healthy with its database", url=url),
        b.HttpCheck(kind="http", name="app metrics answer", url=f"http://{c.ip}:{METRICS_PORT}/metrics"),
    )


def _stage_wheels(work: Path, project: Path, elements: Path) -> Mapping[str, str]:
    """kiln-app installs the demo app from a wheelhouse: the image has no package index at first boot."""
    from kiln.build.stage import app_wheelhouse

    requirements = elements / "kiln-app" / "requirements.txt"
    wheels = app_wheelhouse(work / "wheels", app_package=project / "kilnapp", requirements=requirements)
    return {"DIB_KILN_APP_WHEELS": str(wheels)}


def _port_taken(facts: Facts) -> Found:
    """The app's port must not be one the app hosts already listen on (SSH, the node exporter, the app's metrics)."""
    settings = facts.roles.get(NAME) if facts.roles else None
    port = settings.get("port") if isinstance(settings, dict) else None
    taken = {22: "SSH", NODE_EXPORTER_PORT: "the node exporter", METRICS_PORT: "the app's metrics"}
    if isinstance(port, int) and port in taken:
        yield f"$.roles.{NAME}.port", f"port {port} is {taken[port]}'s on every host", "another port, e.g. 8080"


ROLE = RoleSpec(
    name=NAME,
    summary="application servers (gunicorn)",
    settings_schema={
        "description": "Application servers running the app under gunicorn.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "port": {
                "description": "TCP port the app listens on.",
                "type": "integer",
                "minimum": 1024,
                "maximum": 65535,
                "default": 8080,
            },
            "workers": {
                "description": "gunicorn worker processes.",
                "type": "integer",
                "minimum": 1,
                "maximum": 64,
                "default": 2,
            },
        },
    },
    settings=lambda s: AppSettings(**s),
    context=_context,
    join=_join,
    checks=_checks,
    firewall=_firewall,
    elements=("kiln-app",),
    image_inputs=("kilnapp",),
    stage=_stage_wheels,
    lab_memory_mib=640,
    files=(
        FileSpec(APP_ENV, "app.env.j2", mode="0640", group="kiln-app"),
        FileSpec(APP_UNIT, "kiln-app.service.j2"),
    ),
    secrets=(SecretSpec("db_app_password", PASSWORD_FILE, mode="0640", group="kiln-app"),),
    services=(ServiceSpec("kiln-app.service", (APP_ENV, APP_UNIT, PASSWORD_FILE)),),
    needs=(Need("db", "the app needs a database"),),
    meaning=(("app-port-taken", _port_taken),),
)
