"""roles.yaml → a typed Cluster, or every problem with its file, line and path. No side effects."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from kiln import mac
from kiln.model import access, monitoring
from kiln.model.cluster import (
    Allow,
    Bmc,
    BmcDriver,
    Bond,
    BondMode,
    Cluster,
    DbRole,
    Direction,
    DiskRule,
    Host,
    HostNetwork,
    Image,
    Network,
    Route,
    Transport,
    Vlan,
    parse_size,
)
from kiln.model.meaning import check_meaning
from kiln.model.problems import InvalidRoles, Problem
from kiln.model.shape import check_shape, schema
from kiln.model.yamlmarks import Marked, YamlSyntaxError, load_marked

__all__ = [
    "Bmc",
    "BmcDriver",
    "Cluster",
    "DbRole",
    "DiskRule",
    "Host",
    "HostNetwork",
    "InvalidRoles",
    "Problem",
    "load_roles",
    "parse_roles",
    "schema",
]


def _defaults(*path: str) -> dict[str, Any]:
    """The `default` of every property of the schema object at `path` (the schema is the one source)."""
    node = schema()
    for key in path:
        node = node["properties"][key]
    return {k: v["default"] for k, v in node["properties"].items() if "default" in v}


def _file_problem(code: str, message: str, expected: str, file: str, line: int = 1, path: str = "$") -> InvalidRoles:
    return InvalidRoles([Problem(line, path, message, expected, file, code)])


def load_roles(path: str | os.PathLike[str]) -> Cluster:
    """Read and validate a roles.yaml file; raise InvalidRoles listing every problem."""
    file = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _file_problem("file-not-found", "file not found", "a roles.yaml file", file) from None
    except IsADirectoryError:
        raise _file_problem("not-a-file", "is a directory", "a roles.yaml file", file) from None
    except UnicodeDecodeError as e:
        raise _file_problem("not-utf8", f"not UTF-8 text ({e.reason})", "a UTF-8 YAML file", file) from None
    except OSError as e:
        raise _file_problem("unreadable", f"cannot be read: {e.strerror}", "a readable file", file) from None
    return parse_roles(text, file)


def parse_roles(text: str, file: str = "roles.yaml") -> Cluster:
    if not text.strip():
        raise _file_problem("empty-file", "the file is empty", "a roles.yaml v1 document", file)
    try:
        marked = load_marked(text)
    except YamlSyntaxError as e:
        raise _file_problem(
            "yaml-syntax", f"YAML syntax error: {e.message}", "valid YAML", file, e.line, e.path
        ) from None
    if marked.data is None:
        raise _file_problem(
            "no-document", "the file holds no document, only comments", "a roles.yaml v1 document", file
        )
    if not isinstance(marked.data, dict):
        raise _file_problem(
            "not-a-mapping", "the document is not a mapping", "keys such as version, cluster, hosts", file
        )
    problems = check_shape(marked, file) + check_meaning(marked, file)
    if problems:
        raise InvalidRoles(_dedupe(problems))
    return _build(marked)


def disk_rule(given: str | dict[str, Any] | None) -> DiskRule:
    """hosts[].disk, valid, as a DiskRule: absent is the default rule, a string names the device (/dev/sda)."""
    if given is None:
        return DiskRule()
    if isinstance(given, str):
        return DiskRule(name=given.removeprefix("/dev/"))
    keys: dict[str, Any] = dict(given)  # the schema admits only DiskRule's keys
    for size in ("min_size", "max_size"):
        if size in keys:
            keys[size] = parse_size(keys[size])
    if isinstance(keys.get("wwn"), int):  # YAML reads an unquoted 0x5002538e40a1b2c3 as a number: lsblk's spelling
        keys["wwn"] = f"0x{keys['wwn']:016x}"
    return DiskRule(**keys)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    out: dict[tuple[str, str], Problem] = {}
    for p in problems:
        out.setdefault((p.path, p.message), p)
    return list(out.values())


def _bmc(given: dict[str, Any]) -> Bmc:
    return Bmc(
        driver=BmcDriver(given["driver"]),
        address=given.get("address"),
        credentials=given.get("credentials"),
        system=given.get("system"),
        cipher_suite=given.get("cipher_suite"),
        ca=given.get("ca"),
    )


def host_network(given: dict[str, Any] | None) -> HostNetwork | None:
    """hosts[].network, valid, as a HostNetwork (MACs normalised); None when the host declares none."""
    if given is None:
        return None
    bond = given.get("bond")

    def addresses(values: list[str]) -> tuple[ipaddress.IPv4Interface, ...]:
        return tuple(ipaddress.IPv4Interface(a) for a in values)

    return HostNetwork(
        mtu=given.get("mtu"),
        bond=Bond(
            mode=BondMode(bond["mode"]),
            members=tuple(mac.normalize(m) for m in bond["members"]),
            lacp_rate=bond.get("lacp_rate"),
            primary=mac.normalize(bond["primary"]) if "primary" in bond else None,
        )
        if bond
        else None,
        addresses=addresses(given.get("addresses", [])),
        vlans=tuple(Vlan(v["id"], addresses(v["addresses"]), v.get("mtu")) for v in given.get("vlans", [])),
        routes=tuple(
            Route(ipaddress.IPv4Network(r["to"]), ipaddress.IPv4Address(r["via"])) for r in given.get("routes", [])
        ),
        allow=tuple(
            Allow(
                Direction(a["direction"]),
                Transport(a["proto"]),
                tuple(a["ports"]),
                tuple(ipaddress.IPv4Network(p) for p in a["peers"]),
            )
            for a in given.get("allow", [])
        ),
    )


def _build(marked: Marked) -> Cluster:
    d = marked.data
    assert isinstance(d, dict)
    net = d["network"]
    roles = d["roles"]

    from kiln import roles as registry

    def own(name: str) -> dict[str, Any]:
        """roles.<name> without its access section (the model's, not the role's) and with its defaults."""
        given = {k: v for k, v in roles[name].items() if k != "access"}
        return {**{k: v for k, v in _defaults("roles", name).items() if k != "access"}, **given}

    settings = {r.name: r.settings(own(r.name)) for r in registry.all_roles() if r.name in roles}
    hosts = tuple(
        Host(
            name=h["name"],
            role=h["role"],
            mac=mac.normalize(h["mac"]),
            ip=ipaddress.IPv4Address(h["ip"]),
            disk=disk_rule(h.get("disk")),
            priority=h.get("priority"),
            db_role=DbRole(h["db_role"]) if "db_role" in h else None,
            server_id=h.get("server_id"),
            bmc=_bmc(h["bmc"]) if "bmc" in h else None,
            network=host_network(h.get("network")),
        )
        for h in d["hosts"]
    )
    image = {**_defaults("image"), **d["image"]}
    return Cluster(
        name=d["cluster"]["name"],
        domain=d["cluster"]["domain"],
        network=Network(
            subnet=ipaddress.IPv4Network(net["subnet"]),
            gateway=ipaddress.IPv4Address(net["gateway"]),
            dns=tuple(ipaddress.IPv4Address(a) for a in net["dns"]),
            vip=ipaddress.IPv4Address(net["vip"]),
            admin=tuple(ipaddress.IPv4Network(a) for a in net["admin"]),
        ),
        provisioning_url=d["provisioning"]["url"].rstrip("/"),
        image=Image(release=image["release"], mirror=image["mirror"], size=image["size"]),
        settings=settings,
        hosts=hosts,
        access=access.build(d, roles),
        monitoring=monitoring.build(d.get("monitoring"), _defaults("monitoring")["alerts_to"]),
    )
