"""The bundle: everything one host needs, as typed values and as JSON. The one contract between the renderer,
the server and the agent; standard library only (the frozen agent imports it).

    Bundle.from_json(body)  -> Bundle, or BundleError naming the JSON path of the first problem
    bundle.to_json()        -> canonical bytes (sorted keys, no insignificant whitespace, UTF-8): what is signed
    schema_document()       -> its JSON Schema (published as docs/bundle.schema.json for other agents)

Secrets travel by reference (value null) until the server fills them for the one fetch that may have them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kiln.typedjson import DecodeError, decode, doc, encode, json_schema, pattern

BUNDLE_SCHEMA = 3  # the agent refuses any other (3: the admin account)

# What a bundle may name. Every pattern matches the whole string: no trailing newline, no control characters.
ABSOLUTE_PATH = r"/(?:(?!\.\.?(?:/|$))[A-Za-z0-9._@+-]+/?)*"  # no "." or "..", no spaces, no metacharacters
HOST_NAME = r"[a-z][a-z0-9-]{0,62}"
MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
IPV4 = r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# rwx for owner and group; others at most r-x: no setuid, setgid, sticky or world-writable file from a bundle
MODE = r"0[0-7]{2}[0145]"
ACCOUNT = r"[a-z_][a-z0-9_-]{0,31}"
UNIT = r"[A-Za-z0-9@._-]+\.(?:service|socket|timer|target|path)"
SECRET_NAME = r"[a-z][a-z0-9_]{0,63}"
SHA256 = r"(?:[0-9a-f]{64})?"
# an OpenSSH public key line, no options (roles.yaml's keys, parsed for real by kiln.model.access); one line
SSH_KEY_TYPE = (
    r"(?:ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com"
    r"|ssh-rsa)"
)
SSH_KEY = SSH_KEY_TYPE + r" AAAA[A-Za-z0-9+/]+={0,2}(?: [^ \x00-\x1f\x7f][^\x00-\x1f\x7f]*)?"


class BundleError(ValueError):
    """A bundle that does not fit the contract; `path` is where ($.files[3].mode)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def _path(what: str = "") -> Any:
    return field(metadata=pattern(ABSOLUTE_PATH, what or "an absolute path on the host"))


@dataclass(frozen=True)
class HostInfo:
    """Who the bundle is for."""

    name: str = field(metadata=pattern(HOST_NAME))
    role: str = field(metadata=pattern(r"[a-z][a-z0-9]{0,15}"))
    mac: str = field(metadata=pattern(MAC, "the provisioning NIC's MAC, lower case"))
    ip: str = field(metadata=pattern(IPV4))
    fqdn: str


@dataclass(frozen=True)
class Network:
    """The cluster NIC's static configuration."""

    interface: str = field(metadata=pattern(r"[a-z][a-z0-9]{0,14}"))
    address: str = field(metadata=pattern(IPV4))
    prefix: int
    gateway: str = field(metadata=pattern(IPV4))
    dns: tuple[str, ...]
    vip: str = field(metadata=pattern(IPV4))


@dataclass(frozen=True)
class Directory:
    path: str = _path()
    mode: str = field(default="0755", metadata=pattern(MODE))
    owner: str = field(default="root", metadata=pattern(ACCOUNT))
    group: str = field(default="root", metadata=pattern(ACCOUNT))


@dataclass(frozen=True)
class File:
    """A file; its text is `content`, or, for a file every host of the cluster shares (/etc/hosts, the tier sets),
    the shared content whose sha256 is `shared`: fetched once (GET /v1/shared/SHA256) and checked against it."""

    path: str = _path()
    content: str = field(default="", metadata=doc("the file's text, UTF-8 (empty when `shared` names it)"))
    mode: str = field(default="0644", metadata=pattern(MODE))
    owner: str = field(default="root", metadata=pattern(ACCOUNT))
    group: str = field(default="root", metadata=pattern(ACCOUNT))
    shared: str = field(default="", metadata=pattern(SHA256, "sha256 (hex) of the shared content, or empty"))
    check: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "the daemon's own config test (argv, e.g. haproxy -c -f PATH): run after a change is written and before "
            "any service reloads; a refusal puts the previous files back"
        ),
    )


@dataclass(frozen=True)
class Secret:
    """A secret file; `value` is null until the server fills it for the fetch that may have it."""

    name: str = field(metadata=pattern(SECRET_NAME))
    path: str = _path()
    mode: str = field(default="0600", metadata=pattern(MODE))
    owner: str = field(default="root", metadata=pattern(ACCOUNT))
    group: str = field(default="root", metadata=pattern(ACCOUNT))
    value: str | None = None


@dataclass(frozen=True)
class Service:
    """A systemd unit to enable and run; reloaded when one of `restart_on` changed, restarted when that file sets
    its command line (see `restarts_for`)."""

    unit: str = field(metadata=pattern(UNIT))
    enable: bool = True
    restart_on: tuple[str, ...] = ()

    def restarts_for(self, path: str) -> bool:
        """Whether a change of `path` needs a restart, not a reload: the unit's own file or drop-in, or an
        /etc/default file (Debian's EnvironmentFile, e.g. the exporters' ARGS). A reload keeps the old command
        line, and some daemons exit on its SIGHUP (node_exporter did, and was not started again)."""
        return (
            path.endswith(f"/{self.unit}")
            or f"/{self.unit}.d/" in path
            or (path.startswith("/etc/default/") and path in self.restart_on)
        )


@dataclass(frozen=True)
class Admin:
    """The operators' account (roles.yaml access): created on the first boot (no password, /bin/bash, home 0700),
    its ~/.ssh/authorized_keys kept equal to `keys` on every converge; sudo comes from a rendered sudoers drop-in."""

    name: str = field(metadata=pattern(ACCOUNT))
    keys: tuple[str, ...] = field(default=(), metadata=doc("OpenSSH public key lines, no options, one line each"))

    def __post_init__(self) -> None:
        if self.name == "root":
            raise ValueError("the admin account cannot be root")
        for i, key in enumerate(self.keys):
            if not re.fullmatch(SSH_KEY, key):
                raise ValueError(f"keys[{i}]: not one OpenSSH public key line without options")

    def authorized_keys(self) -> str:
        """The whole authorized_keys file: the keys, one a line, and a header saying who writes it."""
        header = "# written by kiln's agent from roles.yaml access.ssh_keys: edits here are replaced\n"
        return header + "".join(f"{key}\n" for key in self.keys)


# --- joins: how a host proves it took its place; one kind per way of proving it ----------------------------


@dataclass(frozen=True)
class LbJoin:
    """keepalived runs with this priority, the VIP is held somewhere, HAProxy sees a web server UP."""

    kind: Literal["lb"]
    vip: str = field(metadata=pattern(IPV4))
    interface: str
    priority: int
    stats_url: str


@dataclass(frozen=True)
class ServiceJoin:
    """The role's daemon runs and its health URL answers 200 (through the peers it depends on)."""

    kind: Literal["service"]
    process: str = field(metadata=doc("the daemon's process name (comm)"))
    unit: str = field(metadata=pattern(UNIT))
    health_url: str
    what: str = field(metadata=doc("what a 200 from health_url proves, for the step's message"))


@dataclass(frozen=True)
class DbPrimaryJoin:
    """Binary log and GTID on; the replication, app, exporter and monitor accounts for exactly the listed hosts;
    writable once no other db host is."""

    kind: Literal["db-primary"]
    database: str
    port: int
    server_id: int
    replication_user: str
    app_user: str
    exporter_user: str
    replica_hosts: tuple[str, ...]  # every db host: after a failover any of them follows another
    app_hosts: tuple[str, ...]
    monitor_user: str = "kiln_monitor"
    monitor_hosts: tuple[str, ...] = ()  # the admin networks, as MariaDB host patterns ("10.10.0.0/255.255.255.0")


@dataclass(frozen=True)
class DbReplicaJoin:
    """Seed from the primary when it has data, follow it by GTID, read_only."""

    kind: Literal["db-replica"]
    database: str
    port: int
    server_id: int
    replication_user: str
    app_user: str
    primary: str = field(metadata=pattern(IPV4))
    wait_seconds: int = 900


Join = LbJoin | ServiceJoin | DbPrimaryJoin | DbReplicaJoin


# --- checks: what proves the host healthy once it joined -----------------------------------------------------


@dataclass(frozen=True)
class HttpCheck:
    kind: Literal["http"]
    name: str
    url: str


@dataclass(frozen=True)
class TcpCheck:
    kind: Literal["tcp"]
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class CommandCheck:
    kind: Literal["command"]
    name: str
    argv: tuple[str, ...]


Check = HttpCheck | TcpCheck | CommandCheck


@dataclass(frozen=True)
class Bundle:
    """Everything one host needs: its files, secrets by reference, services, its join and its checks."""

    schema: int
    cluster: str
    host: HostInfo
    network: Network
    directories: tuple[Directory, ...]
    files: tuple[File, ...]
    secrets: tuple[Secret, ...]
    services: tuple[Service, ...]
    join: Join
    checks: tuple[Check, ...]
    admin: Admin | None = field(default=None, metadata=doc("the operators' account; null: the agent manages none"))
    secrets_withheld: bool = field(default=False, metadata=doc("true: the server handed this host's secrets out"))
    # stamped by the server when it signs (a render leaves them empty): which cluster, which publish of its
    # roles file, and when; an agent refuses another cluster's bundle, an expired one and an older generation
    cluster_id: str = field(default="", metadata=pattern(r"(?:[0-9a-f]{32})?", "the cluster's random identity"))
    generation: int = field(default=0, metadata=doc("the publish of roles.yaml this bundle renders (monotonic)"))
    issued_at: int = field(default=0, metadata=doc("unix seconds, the server's clock"))
    expires_at: int = field(default=0, metadata=doc("unix seconds after which an agent refuses it"))

    # --- JSON ---
    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, no insignificant whitespace, UTF-8. Equal bundles give equal bytes."""
        return dumps(encode(self))

    @classmethod
    def from_json(cls, body: bytes | str) -> Bundle:
        """Parse and check a bundle; raise BundleError (with its JSON path) for anything that does not fit."""
        try:
            data = json.loads(body)
        except ValueError as e:
            raise BundleError("$", f"not JSON ({e})") from None
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: object) -> Bundle:
        if isinstance(data, dict) and data.get("schema") != BUNDLE_SCHEMA:
            raise BundleError("$.schema", f"{data.get('schema')!r}: this agent knows schema {BUNDLE_SCHEMA}")
        try:
            return decode(cls, data)
        except DecodeError as e:
            raise BundleError(e.path, e.message) from None

    # --- the server's changes ---
    def stamped(self, *, cluster_id: str, generation: int, now: float, ttl: float) -> Bundle:
        """A copy naming its cluster and generation, issued now and valid for `ttl` seconds."""
        issued = int(now)
        return replace(
            self, cluster_id=cluster_id, generation=generation, issued_at=issued, expires_at=issued + int(ttl)
        )

    def secret_names(self) -> list[str]:
        return [s.name for s in self.secrets]

    def with_secret_values(self, values: dict[str, str]) -> Bundle:
        """A copy with every secret's value filled from `values` (KeyError for one it lacks)."""
        secrets = tuple(replace(s, value=values[s.name]) for s in self.secrets)
        return replace(self, secrets=secrets, secrets_withheld=False)

    def withheld(self) -> Bundle:
        """A copy with every secret's value null, marked as withheld when it has secrets at all."""
        secrets = tuple(replace(s, value=None) for s in self.secrets)
        return replace(self, secrets=secrets, secrets_withheld=bool(secrets))

    def shared_digests(self) -> list[str]:
        """The sha256 of every shared content the bundle's files name, once each, in file order."""
        return list(dict.fromkeys(f.shared for f in self.files if f.shared))

    def secret(self, name: str) -> Secret | None:
        return next((s for s in self.secrets if s.name == name), None)


def shared_digest(content: str) -> str:
    """The sha256 (hex) a File's `shared` names for this content."""
    return hashlib.sha256(content.encode()).hexdigest()


def dumps(data: object) -> bytes:
    """Canonical JSON bytes of plain data."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def schema_document() -> dict[str, Any]:
    """The bundle's JSON Schema, generated from the dataclasses above."""
    return json_schema(
        Bundle, title=f"kiln bundle, schema {BUNDLE_SCHEMA}", schema_id="https://kiln.invalid/bundle.schema.json"
    )


if __name__ == "__main__":  # python -m kiln.bundle > docs/bundle.schema.json
    print(json.dumps(schema_document(), indent=2, sort_keys=True))
