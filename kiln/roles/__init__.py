"""The roles kiln knows, registered in one place. A role is one module here (plus its image element and the
templates it names); everything else finds it through this registry.

    names()      -> ("lb", "web", "app", "db", "mon"): the order hosts are listed and images built in
    get("lb")    -> its RoleSpec (KeyError for a role kiln does not know)
"""

from __future__ import annotations

from kiln.roles import app, db, lb, mon, web
from kiln.roles.spec import RoleSpec

REGISTRY: dict[str, RoleSpec] = {r.name: r for r in (lb.ROLE, web.ROLE, app.ROLE, db.ROLE, mon.ROLE)}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> RoleSpec:
    return REGISTRY[name]


def all_roles() -> tuple[RoleSpec, ...]:
    return tuple(REGISTRY.values())
