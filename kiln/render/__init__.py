"""Render every host's bundle from the cluster model: configs, secrets by reference, services, join, checks.

What a host gets comes from kiln/roles/common.py (every host) and its role's module (kiln/roles/<role>.py);
this module only turns those declarations into a typed Bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from typing import Any

import jinja2

from kiln import bundle as b
from kiln import roles
from kiln.model import Cluster, Host
from kiln.roles import common, hostfirewall, journal
from kiln.roles.context import ClusterView, HostContext, cluster_view, host_context
from kiln.roles.spec import FileSpec, Firewall, RoleSpec


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
        auto_reload=False,  # the templates ship with kiln: no stat() per render
    )


def render_template(name: str, variables: Mapping[str, Any]) -> str:
    try:
        return _environment().get_template(name).render(variables)
    except jinja2.TemplateError as e:
        line = getattr(e, "lineno", None)
        raise RenderError(f"{name}{f':{line}' if line else ''}: {e}") from e


@dataclass(frozen=True)
class TierSet:
    """An nftables `define` of a tier's addresses ($WEB_NODES), for the firewall of hosts that name it."""

    name: str
    body: str  # "10.10.0.21, 10.10.0.22"


class Renderer:
    """Renders the hosts of one cluster; cluster-wide values and files are computed once, not once per host."""

    def __init__(self, cluster: Cluster, retiring: tuple[Host, ...] = ()) -> None:
        """`retiring`: hosts roles.yaml no longer lists, drained (out of the pools) but still allowed in, for the
        generation between a removal and the one that drops them (./inv apply publishes both)."""
        self.cluster = cluster
        self.retiring = retiring
        self.view: ClusterView = cluster_view(cluster, roles.names(), retiring)
        self._by_template: dict[str, str] = {}  # template -> sha256 of its cluster-wide content
        self.shared: dict[str, str] = {}  # sha256 -> content of every cluster-wide file rendered so far
        self.shared_modes: dict[str, str] = {}  # sha256 -> the mode of the files holding it
        self.tier_sets = tuple(
            TierSet(f"{role.upper()}_NODES", ", ".join(p.ip for p in peers))
            for role, peers in self.view.access.items()
            if peers
        )
        self.journal = journal.context(cluster)  # the central journal's values: empty without a mon host

    def role_firewall(self, host: Host, c: HostContext) -> Firewall:
        """The host's firewall as its role makes it, with the central journal's rules: the tier matrix, on `ip`.
        The rules the host declares for itself (hosts[].network.allow: hostfirewall.rules) are not in it."""
        return self._role_firewall(host, c, journal.parts(self.cluster, host))

    def _role_firewall(self, host: Host, c: HostContext, sent: journal.Parts) -> Firewall:
        firewall = roles.get(host.role).firewall(self.cluster, host, c)
        return replace(firewall, inbound=firewall.inbound + sent.inbound, outbound=firewall.outbound + sent.outbound)

    def variables(self, host: Host) -> tuple[HostContext, dict[str, Any], RoleSpec, Firewall]:
        """The host's context, its templates' values, its role, and its whole firewall: the role's, then its own."""
        role = roles.get(host.role)
        c = host_context(self.cluster, host, self.view)
        sent = journal.parts(self.cluster, host)
        own, declared = self._role_firewall(host, c, sent), hostfirewall.rules(host.network)
        firewall = replace(own, inbound=own.inbound + declared.inbound, outbound=own.outbound + declared.outbound)
        variables = {f.name: getattr(c, f.name) for f in fields(c)}  # shallow: peers stay objects
        variables.update(role.context(self.cluster, host, c))
        variables.update(self.journal)
        variables.update(
            tier_sets=self.tier_sets,
            tier_sets_include=common.TIER_SETS.removeprefix("/etc/"),  # relative: found on nft's include path
            firewall=firewall,
            admin_ports=", ".join(str(p) for p in (c.node_exporter_port, *firewall.admin_ports)),
            systemd_units=common.systemd_units(common.SERVICES + role.services + sent.services),
        )
        return c, variables, role, firewall

    def file(self, spec: FileSpec, variables: Mapping[str, Any]) -> b.File:
        """The bundle's entry for a file: its content, or for a cluster-wide file the digest of the content every
        host shares (rendered once; the bundle stays small however many hosts the file lists)."""
        owner = {"mode": spec.mode, "owner": spec.owner, "group": spec.group}
        if not spec.cluster_wide:
            content = render_template(spec.template, variables)
            return b.File(path=spec.path, content=content, check=spec.check, **owner)
        digest = self._by_template.get(spec.template)
        if digest is None:
            content = render_template(spec.template, variables)
            digest = b.shared_digest(content)
            self.shared[digest] = content
            self.shared_modes[digest] = spec.mode
            self._by_template[spec.template] = digest
        return b.File(path=spec.path, shared=digest, check=spec.check, **owner)

    def bundle(self, host: Host) -> b.Bundle:
        """One host's unsigned bundle, secrets by reference (value null)."""
        c, variables, role, _ = self.variables(host)
        host_files = common.host_files(host, c)
        sent = journal.parts(self.cluster, host)
        return b.Bundle(
            schema=b.BUNDLE_SCHEMA,
            cluster=self.cluster.name,
            host=b.HostInfo(name=host.name, role=host.role, mac=host.mac, ip=c.ip, fqdn=f"{host.name}.{c.cluster}"),
            network=b.Network(
                interface=c.interface, address=c.ip, prefix=c.prefix, gateway=c.gateway, dns=c.dns, vip=c.vip
            ),
            directories=tuple(
                b.Directory(path=d.path, mode=d.mode, owner=d.owner, group=d.group)
                for d in common.DIRECTORIES + role.directories
            ),
            files=(
                *(self.file(f.spec, {**variables, "unit": f.unit} if f.unit else variables) for f in host_files),
                *(self.file(f, variables) for f in role.files + sent.files),
            ),
            secrets=tuple(
                b.Secret(name=s.name, path=s.path, mode=s.mode, owner=s.owner, group=s.group)
                for s in role.secrets + sent.secrets
            ),
            services=tuple(
                b.Service(unit=s.unit, restart_on=s.restart_on)
                for s in common.host_services(host_files) + role.services + sent.services
            ),
            join=role.join(self.cluster, host, c),
            checks=common.checks(c) + role.checks(self.cluster, host, c),
            admin=b.Admin(name=self.cluster.access.admin_user, keys=self.cluster.access.keys_for(host.role)),
        )


@dataclass(frozen=True)
class Rendered:
    """Every host's unsigned bundle (secrets referenced, value null) and the shared contents they name."""

    bundles: dict[str, b.Bundle]
    shared: dict[str, str]  # sha256 -> content

    def content(self, bundle: b.Bundle, path: str) -> str:
        """A file's text, whether inline or shared."""
        [f] = [f for f in bundle.files if f.path == path]
        return self.shared[f.shared] if f.shared else f.content


def render(cluster: Cluster, retiring: tuple[Host, ...] = ()) -> Rendered:
    """Every host's bundle and the shared contents they name. `retiring`: see Renderer (they get no bundle)."""
    renderer = Renderer(cluster, retiring)
    bundles = {h.name: renderer.bundle(h) for h in cluster.hosts}
    return Rendered(bundles, renderer.shared)


def render_cluster(cluster: Cluster) -> dict[str, b.Bundle]:
    """Every host's unsigned bundle, by host name (shared contents: render())."""
    return render(cluster).bundles


def render_host(cluster: Cluster, host: Host) -> b.Bundle:
    return Renderer(cluster).bundle(host)
