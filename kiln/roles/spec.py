"""What a role module declares: its settings, what each of its hosts gets, how it joins and how it is checked.

A role module (kiln/roles/<role>.py) builds one RoleSpec; kiln/roles/__init__.py registers it. The model takes
the settings schema, host keys and meaning checks from it; the renderer takes the rest; the build takes the
elements; the lab takes the VM size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kiln import bundle as b

if TYPE_CHECKING:
    from kiln.model.cluster import Cluster, Host
    from kiln.model.meaning import Check
    from kiln.roles.context import HostContext


S = TypeVar("S")


def typed_settings(cluster: Cluster, role: str, kind: type[S]) -> S:
    """roles.<role> as the role module's settings type (the model builds it with RoleSpec.settings)."""
    value = cluster.settings[role]
    if not isinstance(value, kind):
        raise TypeError(f"roles.{role} holds {type(value).__name__}, not {kind.__name__}")
    return value


@dataclass(frozen=True)
class FileSpec:
    """A config file rendered from a template (kiln/render/templates/) for every host of the role."""

    path: str
    template: str
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    cluster_wide: bool = False  # the same content on every host: rendered once per cluster
    # The daemon's own config test, run as if the file were at `path` (kiln/render/check.py): () = none.
    check: tuple[str, ...] = ()


@dataclass(frozen=True)
class DirSpec:
    path: str
    mode: str = "0755"
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class SecretSpec:
    """A secret from secrets/ the role's hosts get once per provisioning."""

    name: str
    path: str
    mode: str = "0600"
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class ServiceSpec:
    """A systemd unit the role runs; restarted (or reloaded) when one of `restart_on` changes."""

    unit: str
    restart_on: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """One nftables accept rule; `peers` names a tier set ($WEB_NODES) or holds addresses."""

    proto: str  # tcp | udp | vrrp
    ports: tuple[int, ...] = ()
    saddr: str = ""
    daddr: str = ""

    @property
    def inbound(self) -> str:
        """The rule in an input chain: new TCP connections, or every packet of another protocol (UDP's replies are
        accepted as established by the chain's conntrack rule all the same)."""
        return self.nft + (" ct state new accept" if self.proto == "tcp" else " accept")

    @property
    def outbound(self) -> str:
        return self.nft + " accept"

    @property
    def nft(self) -> str:
        parts = []
        if self.proto == "vrrp":
            parts.append("ip protocol vrrp")
        if self.saddr:
            parts.append(f"ip saddr {self.saddr}")
        if self.daddr:
            parts.append(f"ip daddr {self.daddr}")
        if self.proto in ("tcp", "udp"):
            ports = str(self.ports[0]) if len(self.ports) == 1 else "{ " + ", ".join(map(str, self.ports)) + " }"
            parts.insert(0, f"{self.proto} dport {ports}")
        return " ".join(parts)


@dataclass(frozen=True)
class Firewall:
    """The role's part of the tier matrix: what it accepts and what it may send beyond the common rules."""

    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()
    admin_ports: tuple[int, ...] = ()  # reached from the admin network (exporters; the db failover monitor)
    defines: tuple[tuple[str, str], ...] = ()  # (name, "a, b"): host-specific nftables sets, e.g. LB_PEERS


@dataclass(frozen=True)
class Need:
    """This role's hosts need at least one host of `role` (e.g. lb needs web): a meaning check."""

    role: str
    why: str


@dataclass(frozen=True)
class RoleSpec:
    """Everything kiln knows about one role."""

    name: str
    summary: str
    settings_schema: Mapping[str, Any]  # the JSON Schema of roles.<name> (an object with defaults)
    settings: Callable[[Mapping[str, Any]], Any]  # roles.<name> with its defaults filled → the typed settings
    context: Callable[[Cluster, Host, HostContext], Mapping[str, Any]]  # template values beyond the common ones
    join: Callable[[Cluster, Host, HostContext], b.Join]
    firewall: Callable[[Cluster, Host, HostContext], Firewall]
    elements: tuple[str, ...]  # diskimage-builder elements of the role image, after kiln-base and kiln-firstboot
    lab_memory_mib: int  # the VM's memory in the lab, under emulation
    files: tuple[FileSpec, ...] = ()
    directories: tuple[DirSpec, ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    checks: Callable[[Cluster, Host, HostContext], tuple[b.Check, ...]] = lambda cluster, host, ctx: ()
    # the image build: project files (relative paths) whose content the image bakes, and a hook that stages them
    # into the build's work directory, returning the DIB_* settings that point the role's element at them
    image_inputs: tuple[str, ...] = ()
    stage: Callable[[Path, Path, Path], Mapping[str, str]] | None = None  # (work, project, elements)
    host_keys: Mapping[str, Any] = field(default_factory=dict)  # extra keys a host of this role may carry (schema)
    needs: tuple[Need, ...] = ()
    meaning: tuple[tuple[str, Check], ...] = ()  # (stable code, check) over the raw document
