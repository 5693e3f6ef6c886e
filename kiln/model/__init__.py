"""roles.yaml → a typed Cluster, or every problem with its file, line and path. No side effects."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from kiln.model.cluster import (
    AppSettings,
    Cluster,
    DbRole,
    DbSettings,
    Host,
    Image,
    LbSettings,
    Network,
    Role,
    WebSettings,
)
from kiln.model.meaning import check_meaning
from kiln.model.problems import InvalidRoles, Problem
from kiln.model.shape import check_shape, schema
from kiln.model.yamlmarks import Marked, YamlSyntaxError, load_marked

__all__ = [
    "Cluster", "DbRole", "Host", "InvalidRoles", "Problem", "Role", "load_roles", "parse_roles", "schema",
]  # fmt: skip


def _defaults(*path: str) -> dict[str, object]:
    """The `default` of every property of the schema object at `path` (the schema is the one source)."""
    node = schema()
    for key in path:
        node = node["properties"][key]
    return {k: v["default"] for k, v in node["properties"].items() if "default" in v}


def load_roles(path: str | os.PathLike[str]) -> Cluster:
    """Read and validate a roles.yaml file; raise InvalidRoles listing every problem."""
    file = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidRoles([Problem(1, "$", "file not found", "a roles.yaml file", file)]) from None
    except IsADirectoryError:
        raise InvalidRoles([Problem(1, "$", "is a directory", "a roles.yaml file", file)]) from None
    except UnicodeDecodeError as e:
        raise InvalidRoles([Problem(1, "$", f"not UTF-8 text ({e.reason})", "a UTF-8 YAML file", file)]) from None
    except OSError as e:
        raise InvalidRoles([Problem(1, "$", f"cannot be read: {e.strerror}", "a readable file", file)]) from None
    return parse_roles(text, file)


def parse_roles(text: str, file: str = "roles.yaml") -> Cluster:
    if not text.strip():
        raise InvalidRoles([Problem(1, "$", "the file is empty", "a roles.yaml v1 document", file)])
    try:
        marked = load_marked(text)
    except YamlSyntaxError as e:
        raise InvalidRoles([Problem(e.line, e.path, f"YAML syntax error: {e.message}", "valid YAML", file)]) from None
    if marked.data is None:
        raise InvalidRoles(
            [Problem(1, "$", "the file holds no document, only comments", "a roles.yaml v1 document", file)]
        )
    if not isinstance(marked.data, dict):
        raise InvalidRoles(
            [Problem(1, "$", "the document is not a mapping", "keys such as version, cluster, hosts", file)]
        )
    problems = check_shape(marked, file) + check_meaning(marked, file)
    if problems:
        raise InvalidRoles(_dedupe(problems))
    return _build(marked)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    out: dict[tuple[str, str], Problem] = {}
    for p in problems:
        out.setdefault((p.path, p.message), p)
    return list(out.values())


def _build(marked: Marked) -> Cluster:
    d = marked.data
    assert isinstance(d, dict)
    net = d["network"]
    roles = d["roles"]

    def settings(name: str) -> dict | None:
        return None if name not in roles else {**_defaults("roles", name), **roles[name]}

    lb, web, app, db = (settings(n) for n in ("lb", "web", "app", "db"))
    host_defaults = schema()["properties"]["hosts"]["items"]["properties"]
    hosts = tuple(
        Host(
            name=h["name"],
            role=Role(h["role"]),
            mac=h["mac"].lower(),
            ip=ipaddress.IPv4Address(h["ip"]),
            disk=h.get("disk", host_defaults["disk"]["default"]),
            priority=h.get("priority"),
            db_role=DbRole(h["db_role"]) if "db_role" in h else None,
            index=i,
        )
        for i, h in enumerate(d["hosts"])
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
        lb=LbSettings(**lb) if lb else None,
        web=WebSettings(**web) if web else None,
        app=AppSettings(**app) if app else None,
        db=DbSettings(**db) if db else None,
        hosts=hosts,
    )
