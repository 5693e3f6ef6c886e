"""`./inv serve` and `./inv reprovision`: parse options, return an exit code."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from kiln.project import DEFAULT_DATABASE, Project
from kiln.render import RenderError
from kiln.server import netboot
from kiln.server.bundles import ClusterHook
from kiln.server.main import DEFAULT_HTTP_PORT, ConfigError, ServerConfig, default_tls_listen, parse_address, serve
from kiln.server.store import NotAStateDatabase, StateStore, UnknownHost


def serve_command(
    project: Project,
    *,
    listen: str | None = None,
    tls_listen: str | None = None,
    database: str | None = None,
    secrets: str | None = None,
    images: str | None = None,
    cluster_hook: ClusterHook | None = None,
    tftp_listen: str | None = None,
) -> int:
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    try:
        config = ServerConfig(
            project=project.root,
            cluster=cluster,
            secrets=Path(secrets) if secrets else project.secrets,
            images=Path(images) if images else project.images,
            database=database or DEFAULT_DATABASE,
            listen=parse_address(listen or f"0.0.0.0:{DEFAULT_HTTP_PORT}", "--listen"),
            tls_listen=parse_address(tls_listen or default_tls_listen(cluster), "--tls-listen"),
            cluster_hook=cluster_hook,
            roles_text=project.roles_path.read_text(),
            roles_shown=project.roles_shown,
            tftp_listen=parse_address(tftp_listen, "--tftp-listen") if tftp_listen else None,
        )
        return serve(config)
    except (ConfigError, ValueError) as e:
        print(f"kiln serve: {e}", file=sys.stderr)
        return 1
    except RenderError as e:
        print(f"kiln serve: cannot render the bundles: {e}", file=sys.stderr)
        return 1


def reprovision_command(project: Project, *, host: str, database: str | None = None, force: bool = False) -> int:
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    try:
        target = cluster.host(host)
    except KeyError:
        names = ", ".join(h.name for h in cluster.hosts)
        print(f"no host named {host!r} in {project.roles_shown} (hosts: {names})", file=sys.stderr)
        return 1
    if target.role == "db" and not force:
        from kiln.db.topology import reprovision_refusal  # asks the db hosts, as the failover monitor does
        from kiln.secrets import SecretMissing, SecretStore

        try:
            refusal = reprovision_refusal(cluster, SecretStore(project.secrets), host)
        except SecretMissing as e:
            refusal = str(e)
        if refusal:
            print(
                f"kiln reprovision: {host}: {refusal}. Re-provisioning seeds it afresh from the primary, so this "
                "would lose data; --force if you are sure (./inv db status shows the db hosts)",
                file=sys.stderr,
            )
            return 1
    try:
        store = StateStore.open(database or DEFAULT_DATABASE, project.root, create=False)
    except NotAStateDatabase as e:
        print(
            f"kiln reprovision: {e}; give --database the URL ./inv serve uses (default {DEFAULT_DATABASE}, made "
            "when the server first starts: with no server run yet every host is armed already)",
            file=sys.stderr,
        )
        return 1
    except ValueError as e:
        print(f"kiln reprovision: {e}", file=sys.stderr)
        return 1
    try:
        store.ensure_hosts(h.name for h in cluster.hosts)
        generation = store.rearm(host)
    except UnknownHost:
        print(f"{host}: not in the state database", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"{host}: re-armed (provisioning #{generation}): its next PXE boot installs it again, "
        "its secrets are handed out once more, its alerts are cleared"
    )
    return 0


def tftp_root_command(out: Path, server: str | None) -> int:
    """`./inv tftp-root`: netboot.layout into `out`, one line per file; 1 with the apt command when this machine lacks
    Debian's signed shim or GRUB, or when `server` is not an IPv4 address (GRUB's tftp device takes an address, and
    the listener is IPv4 only)."""
    if server is not None:
        try:
            ipaddress.IPv4Address(server)
        except ValueError:
            print(f"--server {server!r}: expected the IPv4 address kiln serve's TFTP listens on", file=sys.stderr)
            return 1
    try:
        written = netboot.layout(out, server)
    except netboot.Missing as e:
        print(f"tftp-root: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    where = f"kiln serve --tftp-listen {server}:69" if server else "this TFTP server"
    print(f"GRUB reads grub/grub.cfg, then each machine's config from {where} (docs/server.md)")
    return 0
