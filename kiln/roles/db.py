"""db: a MariaDB primary with binary log and GTID, and replicas that follow it; only app and db hosts reach it."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln import bundle as b
from kiln.model.cluster import Cluster, DbRole, Host
from kiln.model.meaning import Facts, Found
from kiln.roles.context import SECRETS_DIR, HostContext
from kiln.roles.spec import DirSpec, FileSpec, Firewall, RoleSpec, Rule, SecretSpec, ServiceSpec, typed_settings

NAME = "db"
PORT = 3306
REPLICATION_USER = "repl"
APP_USER = "app"
# the Debian exporter unit runs as the OS user prometheus; MariaDB maps it to this account by unix_socket
EXPORTER_USER = "prometheus"
EXPORTER_PORT = 9104
MARIADB_CNF = "/etc/mysql/mariadb.conf.d/60-kiln.cnf"
EXPORTER_DEFAULT = "/etc/default/prometheus-mysqld-exporter"
MAX_SERVER_ID = 4294967295  # MariaDB's server_id: 1 .. 2^32 - 1
# How long the primary holds a commit for a replica's acknowledgement when none answers, before it goes on
# asynchronously (MariaDB's default): a replica's reboot stalls the app's writes once for this long. It must exceed
# the guard's fence time (firstboot.dbguard.FENCE_AFTER) by a margin: a primary cut off from everyone fences itself,
# cutting the commits still waiting, before any of them could be acknowledged without a replica having it.
SEMI_SYNC_TIMEOUT_MS = 10000
# A replica's IO thread gives up on a silent primary after this long and reconnects (MariaDB's default is 60 s; the
# primary sends a heartbeat every half of it): the failover monitor promotes only once no replica hears the primary.
SLAVE_NET_TIMEOUT = 4
MONITOR_USER = "kiln_monitor"
GUARD_CONFIG = "/etc/kiln/db-guard.json"
GUARD_UNIT = "/etc/systemd/system/kiln-db-guard.service"


@dataclass(frozen=True)
class BackupSettings:
    """roles.db.backup: where backups go and how long they stay (kiln.db; the schema below has the meanings)."""

    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    credentials: str = "backup_s3"  # a file in secrets/
    source: str | None = None  # `from`: the replica backups are taken from; None: the first replica
    keep: int = 7
    keep_days: int = 14
    backup_at: str = "daily"  # systemd OnCalendar expressions for the runner's timers (./inv db schedule)
    archive_at: str = "*:0/15"


@dataclass(frozen=True)
class DbSettings:
    database: str
    backup: BackupSettings | None = None


def _settings(s: Mapping[str, Any]) -> DbSettings:
    backup = s.get("backup")
    if backup is None:
        return DbSettings(database=s["database"])
    s3 = backup["s3"]
    options = {k: v for k, v in backup.items() if k in ("credentials", "keep", "keep_days")}
    schedule = backup.get("schedule", {})
    options.update({f"{k}_at": schedule[k] for k in ("backup", "archive") if k in schedule})
    return DbSettings(
        database=s["database"],
        backup=BackupSettings(
            bucket=s3["bucket"],
            endpoint=s3.get("endpoint"),
            **{k: s3[k] for k in ("region", "prefix") if k in s3},
            source=backup.get("from"),
            **options,
        ),
    )


def backup_source(cluster: Cluster) -> Host:
    """The replica backups are taken from: roles.db.backup.from, else the first replica (validation makes sure
    there is one when roles.db.backup is set)."""
    settings = settings_of(cluster).backup
    assert settings is not None
    if settings.source:
        return cluster.host(settings.source)
    return cluster.db_replicas[0]


def settings_of(cluster: Cluster) -> DbSettings:
    return typed_settings(cluster, NAME, DbSettings)


def server_id(host: Host) -> int:
    """MariaDB's server_id: roles.yaml's when it sets one, else derived from the host's name, never from its place
    in the list (inserting or removing a host must not renumber the others: replicas with one id fight)."""
    if host.server_id is not None:
        return host.server_id
    return zlib.crc32(host.name.encode()) % MAX_SERVER_ID + 1


def _context(cluster: Cluster, host: Host, c: HostContext) -> Mapping[str, Any]:
    return {
        "database": settings_of(cluster).database,
        "db_port": PORT,
        "server_id": server_id(host),
        "is_replica": not host.is_primary,
        "semi_sync_timeout_ms": SEMI_SYNC_TIMEOUT_MS,
        "slave_net_timeout": SLAVE_NET_TIMEOUT,
        "guard_config_path": GUARD_CONFIG,
        "guard_config": json.dumps(
            {
                "address": str(host.ip),
                "port": PORT,
                "peers": [str(h.ip) for h in cluster.by_role(NAME) if h.name != host.name],
                "peer_user": REPLICATION_USER,
                "password_file": f"{SECRETS_DIR}/db_replication_password",
            },
            indent=2,
        ),
        "exporter_db_user": EXPORTER_USER,
        "mysqld_exporter_port": EXPORTER_PORT,
    }


def _firewall(cluster: Cluster, host: Host, c: HostContext) -> Firewall:
    return Firewall(
        inbound=(Rule("tcp", (PORT,), saddr="$APP_NODES"), Rule("tcp", (PORT,), saddr="$DB_NODES")),
        outbound=(Rule("tcp", (PORT,), daddr="$DB_NODES"),),
        admin_ports=(EXPORTER_PORT, PORT),  # PORT: the failover monitor (kiln.db.failover), as kiln_monitor only
    )


def _join(cluster: Cluster, host: Host, c: HostContext) -> b.Join:
    primary = cluster.db_primary
    assert primary is not None
    database = settings_of(cluster).database
    if host.is_primary:
        return b.DbPrimaryJoin(
            kind="db-primary",
            database=database,
            port=PORT,
            server_id=server_id(host),
            replication_user=REPLICATION_USER,
            app_user=APP_USER,
            exporter_user=EXPORTER_USER,
            replica_hosts=tuple(str(h.ip) for h in cluster.by_role(NAME)),
            app_hosts=tuple(p.ip for p in c.access["app"]),  # retiring app hosts keep theirs until they are gone
            monitor_user=MONITOR_USER,
            monitor_hosts=tuple(f"{n.network_address}/{n.netmask}" for n in cluster.network.admin),
        )
    return b.DbReplicaJoin(
        kind="db-replica",
        database=database,
        port=PORT,
        server_id=server_id(host),
        replication_user=REPLICATION_USER,
        app_user=APP_USER,
        primary=str(primary.ip),
    )


def _checks(cluster: Cluster, host: Host, c: HostContext) -> tuple[b.Check, ...]:
    return (
        b.TcpCheck(kind="tcp", name="mariadb accepts connections", host=c.ip, port=PORT),
        b.HttpCheck(kind="http", name="mysqld exporter answers", url=f"http://{c.ip}:{EXPORTER_PORT}/metrics"),
    )


def _server_ids(facts: Facts) -> Found:
    """Every db host's server_id (set or derived from its name) differs: a replica whose id another one has is kicked
    off the primary again and again (errno 4052)."""
    seen: dict[int, int] = {}
    for i, h in facts.hosts_of(NAME):
        name, explicit = h.get("name"), h.get("server_id")
        if isinstance(explicit, int) and not isinstance(explicit, bool):
            sid = explicit
        elif isinstance(name, str):
            sid = zlib.crc32(name.encode()) % MAX_SERVER_ID + 1
        else:
            continue
        if sid in seen:
            yield f"$.hosts[{i}]", f"server_id {sid} is also $.hosts[{seen[sid]}]'s", "server_id: a distinct number"
        else:
            seen[sid] = i


def _db_role_missing(facts: Facts) -> Found:
    for i, h in facts.hosts_of(NAME):
        if "db_role" not in h:
            yield f"$.hosts[{i}]", "db host without a db_role", "db_role: primary or replica"


# names roles.db.database must not take (compared case-insensitively): MariaDB's own schemas, where the primary's
# join would grant the app user ALTER on the grant tables, and `test`, which its hardening drops
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
HARDENING_DROPS = "test"


def _reserved_database(facts: Facts) -> Found:
    settings = (facts.roles or {}).get(NAME)
    name = settings.get("database") if isinstance(settings, dict) else None
    if not isinstance(name, str):
        return
    expected = "the application's own database, not mysql, information_schema, performance_schema, sys or test"
    if name.lower() in SYSTEM_SCHEMAS:
        yield f"$.roles.{NAME}.database", f"{name!r} is one of MariaDB's system schemas", expected
    elif name.lower() == HARDENING_DROPS:
        yield (
            f"$.roles.{NAME}.database",
            f"{name!r} is the test database, which the primary's hardening drops",
            expected,
        )


def _backup_source(facts: Facts) -> Found:
    """roles.db.backup.from names a db replica; without it, some replica exists: backups never load the primary."""
    settings = (facts.roles or {}).get(NAME)
    backup = settings.get("backup") if isinstance(settings, dict) else None
    if not isinstance(backup, dict):
        return
    replicas = {h.get("name") for _, h in facts.hosts_of(NAME) if h.get("db_role") == DbRole.replica}
    source = backup.get("from")
    expected = "the name of a db host with db_role: replica (backups never load the primary)"
    if isinstance(source, str) and source not in replicas:
        yield f"$.roles.{NAME}.backup.from", f"{source!r} is not a db replica", expected
    elif source is None and not replicas:
        yield f"$.roles.{NAME}.backup", "backups are set but there is no db replica to take them from", expected


def _one_primary(facts: Facts) -> Found:
    dbs = facts.hosts_of(NAME)
    primaries = [i for i, h in dbs if h.get("db_role") == DbRole.primary]
    for i in primaries[1:]:
        yield (
            f"$.hosts[{i}].db_role",
            f"a second db primary, $.hosts[{primaries[0]}] is already primary",
            "exactly one primary, the others replica",
        )
    if dbs and not primaries:
        replicas = [i for i, h in dbs if h.get("db_role") == DbRole.replica]
        if replicas:
            yield f"$.hosts[{replicas[0]}].db_role", "a replica without a primary", "one db host with db_role: primary"
        else:
            yield "$.hosts", "no db primary", "one db host with db_role: primary"


ROLE = RoleSpec(
    name=NAME,
    summary="MariaDB primary and GTID replicas",
    settings_schema={
        "description": "MariaDB primary and GTID replicas.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "database": {
                "description": "Name of the application database.",
                "type": "string",
                "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$(?!\\n)",  # $(?!\n): see roles.schema.json's $comment
                "default": "app",
            },
            "backup": {
                "description": "Backups of a replica and its binary logs to an S3 bucket (./inv db; docs/database.md).",
                "type": "object",
                "additionalProperties": False,
                "required": ["s3"],
                "properties": {
                    "s3": {
                        "description": "The bucket backups go to; it must exist.",
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["bucket"],
                        "properties": {
                            "endpoint": {
                                "description": "The S3 API's URL (default: AWS S3 in the region).",
                                "type": "string",
                                "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$(?!\\n)",
                            },
                            "bucket": {
                                "description": "The bucket's name.",
                                "type": "string",
                                "pattern": "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$(?!\\n)",
                            },
                            "region": {
                                "description": "The bucket's region.",
                                "type": "string",
                                "pattern": "^[a-z0-9-]{1,32}$(?!\\n)",
                                "default": "us-east-1",
                            },
                            "prefix": {
                                "description": "Where in the bucket: empty or ending in `/`.",
                                "type": "string",
                                "pattern": "^([A-Za-z0-9._-]+/)*$(?!\\n)",
                                "default": "",
                            },
                        },
                    },
                    "credentials": {
                        "description": "The file in secrets/ holding the bucket's access key (AWS credentials format).",
                        "type": "string",
                        "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$(?!\\n)",
                        "default": "backup_s3",
                    },
                    "from": {
                        "description": "The db replica backups are taken from (default: the first replica).",
                        "$ref": "#/$defs/name",
                    },
                    "keep": {
                        "description": "The newest backups always kept.",
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 1000,
                        "default": 7,
                    },
                    "keep_days": {
                        "description": "Backups younger than this many days are kept too.",
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 3650,
                        "default": 14,
                    },
                    "schedule": {
                        "description": "When the runner's timers run (systemd OnCalendar; ./inv db schedule).",
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "backup": {
                                "description": "A base backup (and retention).",
                                "type": "string",
                                "pattern": "^[A-Za-z0-9*:/,. ~-]{1,64}$(?!\\n)",
                                "default": "daily",
                            },
                            "archive": {
                                "description": "A checkpoint and the binary logs: this bounds the RPO.",
                                "type": "string",
                                "pattern": "^[A-Za-z0-9*:/,. ~-]{1,64}$(?!\\n)",
                                "default": "*:0/15",
                            },
                        },
                    },
                },
            },
        },
    },
    settings=_settings,
    host_keys={
        "server_id": {
            "description": "db only: MariaDB's server_id; by default derived from the host's name, never its place.",
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SERVER_ID,
        },
        "db_role": {
            "description": "db only: `primary` (exactly one) or `replica`.",
            "type": "string",
            "enum": ["primary", "replica"],
        },
    },
    context=_context,
    join=_join,
    checks=_checks,
    firewall=_firewall,
    elements=("kiln-db",),
    lab_memory_mib=896,
    files=(
        FileSpec(
            MARIADB_CNF,
            "mariadb.cnf.j2",
            # --help --verbose parses every option and exits: an unknown option or bad value fails it.
            check=("mariadbd", f"--defaults-file={MARIADB_CNF}", "--user=mysql", "--help", "--verbose"),
        ),
        # the Debian package's postinst sets 0640 prometheus:prometheus; kept so (it holds no password: unix_socket)
        FileSpec(EXPORTER_DEFAULT, "mysqld-exporter.default.j2", mode="0640", group="prometheus"),
        FileSpec(GUARD_CONFIG, "db-guard.json.j2", mode="0600"),
        FileSpec(GUARD_UNIT, "kiln-db-guard.service.j2"),
    ),
    directories=(DirSpec("/var/lib/mysql-files", mode="0750", owner="mysql", group="mysql"),),
    secrets=(
        SecretSpec("db_app_password", f"{SECRETS_DIR}/db_app_password"),
        SecretSpec("db_replication_password", f"{SECRETS_DIR}/db_replication_password"),
        SecretSpec("db_admin_password", f"{SECRETS_DIR}/db_admin_password"),
        SecretSpec("db_monitor_password", f"{SECRETS_DIR}/db_monitor_password"),
    ),
    services=(
        ServiceSpec("mariadb.service", (MARIADB_CNF,)),
        ServiceSpec("prometheus-mysqld-exporter.service", (EXPORTER_DEFAULT,)),
        ServiceSpec("kiln-db-guard.service", (GUARD_CONFIG, GUARD_UNIT)),
    ),
    meaning=(
        ("db-role-missing", _db_role_missing),
        ("db-one-primary", _one_primary),
        ("db-reserved-database", _reserved_database),
        ("db-server-id-duplicate", _server_ids),
        ("db-backup-source", _backup_source),
    ),
)
