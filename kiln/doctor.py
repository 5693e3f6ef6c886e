"""`./inv doctor`: the whole setup checked before machines boot, one line per problem with the command that fixes it.

It reads and changes nothing: the cluster file; secrets/ (every file `./inv keys` makes; the server certificate
names the provisioning host; the site certificate covers the domain and VIP, matches its key, is valid and carries
its chain); each role's image (built, baked for this cluster: provisioning URL, cluster id and the signing key in
secrets/); the PXE installer; the listeners `./inv serve` would open are free; the Debian packages build-all and the
lab need; the BMC logins and CA files roles.yaml's hosts[].bmc name (./inv power).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kiln import hostdeps
from kiln.build import manifest
from kiln.model import Cluster
from kiln.project import Project
from kiln.secrets import PASSWORDS, SecretMissing, SecretStore
from kiln.server.main import DEFAULT_HTTP_PORT

# what ./inv keys makes
SECRET_FILES: tuple[str, ...] = (
    *("signing.key", "signing.pub", "ca.key", "ca.pem", "server.pem", "server.key", "site.pem", "site.key"),
    *("operator.token", "alertmanager.token", "cluster.id", *PASSWORDS),
)


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}: {self.fix}"


def examine(
    project: Project, cluster: Cluster, *, images: Path, secrets: Path, ports: tuple[int, ...] | None = None
) -> list[Problem]:
    """Every problem found, in the order an operator fixes them (keys before images). `ports`: the TCP ports
    `./inv serve` listens on (default: 8080 and the provisioning URL's)."""
    roles, store = project.roles_shown, SecretStore(secrets)
    found = _secrets(cluster, store, roles)
    if not found:  # images are judged against the keys they must bake
        found += _images(cluster, store, images, roles)
    found += _ports(ports if ports is not None else (DEFAULT_HTTP_PORT, urlsplit(cluster.provisioning_url).port or 443))
    found += _packages()
    return found + _bmc_files(cluster, store)


def _secrets(cluster: Cluster, store: SecretStore, roles: str) -> list[Problem]:
    keys = f"./inv keys --roles {roles}"
    missing = [name for name in SECRET_FILES if not (store.root / name).is_file()]
    if missing:
        return [Problem(f"secrets: {store.root} lacks {', '.join(missing)}", f"run {keys} (it never overwrites)")]
    found = [Problem("secrets: server certificate", reason) for reason in store.check_server(cluster)]
    found += [Problem("secrets: site certificate", reason) for reason in store.check_site(cluster)]
    soon = None if found else store.site_expires_soon()
    if soon is not None:
        found.append(Problem(f"secrets: {store.site_pem} expires on {soon:%Y-%m-%d}", "renew it"))
    return found


def _bmc_files(cluster: Cluster, store: SecretStore) -> list[Problem]:
    """The secrets/ files ./inv power reads for each host: its BMC's login, and the CA its redfish BMC is checked by."""
    found = []
    for host in cluster.hosts:
        bmc = host.bmc
        if bmc is None:
            continue
        if bmc.credentials is not None:
            try:
                store.bmc_credentials(bmc.credentials)
            except SecretMissing as e:
                found.append(Problem(f"power: {host.name}", str(e).replace("\n", " ")))
        if bmc.ca is not None and not store.path(bmc.ca).is_file():
            found.append(
                Problem(f"power: {host.name}", f"{store.path(bmc.ca)} is missing: put its BMC's CA certificate there")
            )
    return found


def _images(cluster: Cluster, store: SecretStore, images: Path, roles: str) -> list[Problem]:
    build = f"./inv build-all --roles {roles}"
    try:
        expected = manifest.baked(cluster, store, roles)
    except SecretMissing as e:
        return [Problem("secrets", str(e))]
    found = []
    for role in sorted(cluster.roles_used):
        data = manifest.read(images / role)
        raw = images / role / f"{role}.raw"
        if data is None or not raw.is_file():
            found.append(Problem(f"images: the {role} image is not built ({images / role})", f"run {build}"))
            continue
        other = manifest.built_for_another(data, expected)
        if other is not None:
            found.append(Problem(f"images: the {role} image cannot join this cluster ({other})", f"run {build}"))
        elif manifest.BAKED not in data:
            found.append(
                Problem(f"images: the {role} image does not say which cluster it bakes (an older kiln)", f"run {build}")
            )
    for name in ("vmlinuz", "initrd.img"):
        if not (images / "installer" / name).is_file():
            found.append(Problem(f"images: the PXE installer lacks {name}", f"run {build}"))
            break
    return found


def _ports(ports: tuple[int, ...]) -> list[Problem]:
    found = []
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError as e:
                what = f"listeners: TCP port {port} is taken ({e.strerror})"
                fix = "stop what holds it (ss -ltnp shows it; a running ./inv serve holds it too) or serve elsewhere"
                found.append(Problem(what, fix + " with --listen/--tls-listen"))
    return found


def _packages() -> list[Problem]:
    found = []
    for task in ("build-all", "lab"):
        absent = hostdeps.missing(hostdeps.needed([task]))
        if absent:
            found.append(Problem(f"packages: {task} needs {' '.join(absent)}", f"./inv {task} installs them as root"))
    return found


def doctor(
    project: Project,
    *,
    images: Path | None = None,
    secrets: Path | None = None,
    ports: tuple[int, ...] | None = None,
) -> int:
    """Print one line per problem (or that there is none); 0 when there is none, 1 otherwise."""
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    found = examine(project, cluster, images=images or project.images, secrets=secrets or project.secrets, ports=ports)
    for problem in found:
        print(problem)
    if not found:
        print(f"{project.roles_shown}: cluster {cluster.name}, {len(cluster.hosts)} hosts: no problem found")
    return 1 if found else 0
