"""Operator access: the admin account every host gets and the SSH public keys it accepts. No side effects.

roles.yaml holds `access: {admin_user, ssh_keys}` at the top and `roles.<role>.access.ssh_keys` per role (added to
the top-level keys for that role's hosts). The schema checks each key line's shape (type, base64, comment); the
meaning checks here parse it for real with `cryptography` (the blob must decode, name the type the line says, and
an RSA key must have at least 2048 bits), refuse pasted private keys and repeated keys, and refuse an admin name
that is root's, a system account's or a daemon's. A key line carries no options (`command=`, `from=`, ...): kiln
writes the whole authorized_keys file, and who may reach SSH is the firewall's business (network.admin).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ADMIN = "kiln"
RSA_MIN_BITS = 2048
# key types an OpenSSH 9.2 server (Debian 12) accepts by default; ssh-dss is gone, ssh-rsa means RSA/SHA-2 there
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)
# Accounts a Debian 12 kiln image has or may get (base-passwd, systemd, the packages the role images install): the
# admin account must be none of them, nor any account a rendered file is owned by (kiln.roles, checked below).
SYSTEM_ACCOUNTS = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data",
        "backup", "list", "irc", "gnats", "nobody", "nogroup", "messagebus", "sshd", "mysql", "haproxy",
        "keepalived_script", "prometheus", "tss", "polkitd", "statd", "dnsmasq", "uuidd", "tcpdump", "kiln-app",
        "sudo", "adm", "admin", "wheel", "staff", "users", "operator", "shadow", "utmp", "tty", "disk", "kmem",
        "dialout", "cdrom", "floppy", "audio", "video", "plugdev", "netdev", "input", "render", "kvm", "sgx",
        "crontab", "ssh", "aide", "clamav", "debian-exim", "ntp", "ntpsec",
    }
)  # fmt: skip
SYSTEM_PREFIXES = ("systemd-", "_", "debian-")


@dataclass(frozen=True)
class Access:
    """Who may log in: the admin account's name and its keys (`ssh_keys` for every host, `role_keys` added for
    a role's hosts), each an OpenSSH public key line as roles.yaml has it."""

    admin_user: str = DEFAULT_ADMIN
    ssh_keys: tuple[str, ...] = ()
    role_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def keys_for(self, role: str) -> tuple[str, ...]:
        """The keys a host of `role` accepts: every top-level key, then the role's own, each once."""
        out: dict[bytes, str] = {}
        for line in (*self.ssh_keys, *self.role_keys.get(role, ())):
            out.setdefault(key_blob(line), line)
        return tuple(out.values())

    def with_keys(self, *lines: str) -> Access:
        """A copy with `lines` added to every host's keys (the lab adds its own key this way)."""
        return Access(self.admin_user, (*self.ssh_keys, *lines), self.role_keys)


def key_blob(line: str) -> bytes:
    """The key itself (its base64 blob, decoded): what makes two lines the same key whatever their comments."""
    return base64.b64decode(line.split()[1])


def _strings(blob: bytes) -> Iterator[bytes]:
    """The SSH wire format's length-prefixed strings (RFC 4251 5), in order."""
    at = 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise ValueError("the key data ends inside a length")
        (size,) = struct.unpack(">I", blob[at : at + 4])
        if at + 4 + size > len(blob):
            raise ValueError("the key data is cut short")
        yield blob[at + 4 : at + 4 + size]
        at += 4 + size


def check_key(line: str) -> str:
    """Why `line` is not a usable OpenSSH public key line ("" when it is one)."""
    if "PRIVATE KEY" in line:
        return "this is a private key: it must never be in roles.yaml (remove it, and replace that key)"
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        return ""  # the schema's pattern says what is wrong with its shape
    kind, data = parts[0], parts[1]
    try:
        blob = base64.b64decode(data, validate=True)
        strings = list(_strings(blob))
    except (binascii.Error, ValueError) as e:
        return f"the key data does not decode ({e})"
    if not strings or strings[0] != kind.encode():
        named = strings[0].decode(errors="replace") if strings else "nothing"
        return f"the line says {kind} but its key data is a {named} key"
    if kind.startswith("sk-"):
        return ""  # cryptography does not load security-key types; their structure was checked above
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        key = load_ssh_public_key(f"{kind} {data}".encode())
    except (ValueError, TypeError) as e:
        return f"the key data is not a valid {kind} key ({e})"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_MIN_BITS:
        return f"an RSA key of {key.key_size} bits is too weak"
    return ""


def account_problem(name: str, daemon_accounts: frozenset[str]) -> str:
    """Why `name` cannot be the admin account ("" when it can)."""
    if name in SYSTEM_ACCOUNTS or name.startswith(SYSTEM_PREFIXES):
        return f"{name!r} is root's, a system account's or a daemon's name"
    if name in daemon_accounts:
        return f"{name!r} owns files kiln renders (a daemon's account)"
    return ""


def build(data: Mapping[str, Any], roles: Mapping[str, Any]) -> Access:
    """The typed Access from a valid document's `access` and `roles.<role>.access` sections."""
    top = data.get("access") or {}
    role_keys = {
        name: tuple(settings["access"].get("ssh_keys", ()))
        for name, settings in roles.items()
        if isinstance(settings, Mapping) and "access" in settings
    }
    return Access(
        admin_user=top.get("admin_user", DEFAULT_ADMIN), ssh_keys=tuple(top.get("ssh_keys", ())), role_keys=role_keys
    )
