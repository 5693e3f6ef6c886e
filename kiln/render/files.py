"""What each role gets: files from templates, directories, secrets by name, services. One table each."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.model import DbRole, Role
from kiln.render.context import HAPROXY_READY_SCRIPT, SECRETS_DIR, TLS_PEM

ALL = None
LB, WEB, APP, DB = (frozenset({r}) for r in (Role.lb, Role.web, Role.app, Role.db))


@dataclass(frozen=True)
class FileSpec:
    path: str
    template: str
    roles: frozenset[Role] | None = ALL
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    cluster_wide: bool = False  # the same content on every host: rendered once per cluster


@dataclass(frozen=True)
class DirSpec:
    path: str
    roles: frozenset[Role] | None = ALL
    mode: str = "0755"
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class SecretSpec:
    name: str
    path: str
    roles: frozenset[Role]
    db_role: DbRole | None = None
    mode: str = "0600"
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class ServiceSpec:
    unit: str
    roles: frozenset[Role] | None
    restart_on: tuple[str, ...]


FILES = (
    FileSpec("/etc/hostname", "hostname.j2"),
    FileSpec("/etc/hosts", "hosts.j2", cluster_wide=True),
    FileSpec("/etc/systemd/network/10-kiln0.link", "kiln0.link.j2"),
    FileSpec("/etc/systemd/network/10-kiln0.network", "kiln0.network.j2"),
    FileSpec("/etc/nftables.conf", "nftables.conf.j2", mode="0700"),
    FileSpec("/etc/default/prometheus-node-exporter", "node-exporter.default.j2"),
    FileSpec("/etc/haproxy/haproxy.cfg", "haproxy.cfg.j2", LB, mode="0640", group="haproxy"),
    FileSpec("/etc/keepalived/keepalived.conf", "keepalived.conf.j2", LB, mode="0640"),
    FileSpec(HAPROXY_READY_SCRIPT, "haproxy-ready.j2", LB, mode="0755"),  # root's: enable_script_security
    FileSpec("/etc/sysctl.d/60-kiln-lb.conf", "sysctl-lb.conf.j2", LB),
    FileSpec("/etc/nginx/nginx.conf", "nginx.conf.j2", WEB),
    FileSpec("/etc/nginx/conf.d/kiln-site.conf", "nginx-site.conf.j2", WEB),
    FileSpec("/etc/default/prometheus-nginx-exporter", "nginx-exporter.default.j2", WEB),
    FileSpec("/etc/kiln/app.env", "app.env.j2", APP, mode="0640", group="kiln-app"),
    FileSpec("/etc/systemd/system/kiln-app.service", "kiln-app.service.j2", APP),
    FileSpec("/etc/mysql/mariadb.conf.d/60-kiln.cnf", "mariadb.cnf.j2", DB),
    # the Debian package's postinst sets 0640 prometheus:prometheus; kept so (it holds no password: unix_socket)
    FileSpec(
        "/etc/default/prometheus-mysqld-exporter", "mysqld-exporter.default.j2", DB, mode="0640", group="prometheus"
    ),
)

DIRECTORIES = (
    DirSpec(SECRETS_DIR, mode="0711"),
    DirSpec("/etc/haproxy/certs", LB, mode="0700"),
    DirSpec("/var/cache/nginx/kiln", WEB, mode="0700", owner="www-data", group="www-data"),
    DirSpec("/var/lib/mysql-files", DB, mode="0750", owner="mysql", group="mysql"),
)

SECRETS = (
    SecretSpec("tls_pem", TLS_PEM, LB),
    SecretSpec("db_app_password", f"{SECRETS_DIR}/db_app_password", APP, mode="0640", group="kiln-app"),
    SecretSpec("db_app_password", f"{SECRETS_DIR}/db_app_password", DB),
    SecretSpec("db_replication_password", f"{SECRETS_DIR}/db_replication_password", DB),
    SecretSpec("db_admin_password", f"{SECRETS_DIR}/db_admin_password", DB),
)

SERVICES = (
    ServiceSpec("systemd-networkd.service", ALL, ("/etc/systemd/network/10-kiln0.network",)),
    ServiceSpec("nftables.service", ALL, ("/etc/nftables.conf",)),
    ServiceSpec("prometheus-node-exporter.service", ALL, ("/etc/default/prometheus-node-exporter",)),
    ServiceSpec("haproxy.service", LB, ("/etc/haproxy/haproxy.cfg", TLS_PEM)),
    ServiceSpec("keepalived.service", LB, ("/etc/keepalived/keepalived.conf", HAPROXY_READY_SCRIPT)),
    ServiceSpec("nginx.service", WEB, ("/etc/nginx/nginx.conf", "/etc/nginx/conf.d/kiln-site.conf")),
    ServiceSpec("prometheus-nginx-exporter.service", WEB, ("/etc/default/prometheus-nginx-exporter",)),
    ServiceSpec(
        "kiln-app.service",
        APP,
        ("/etc/kiln/app.env", "/etc/systemd/system/kiln-app.service", f"{SECRETS_DIR}/db_app_password"),
    ),
    ServiceSpec("mariadb.service", DB, ("/etc/mysql/mariadb.conf.d/60-kiln.cnf",)),
    ServiceSpec("prometheus-mysqld-exporter.service", DB, ("/etc/default/prometheus-mysqld-exporter",)),
)
