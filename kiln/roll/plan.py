"""What a roll does, before it does anything: which hosts, in which order, in which batches, and whether taking a
batch out would leave its tier with no healthy host. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kiln.model import Cluster, Host

# One host at a time for these tiers whatever --batch says: two LBs share one VIP, and the db tier changes
# primaries through a switchover that needs the others replicating.
ONE_AT_A_TIME = ("lb", "db")


class PlanError(Exception):
    """The roll cannot be planned as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    role: str
    batches: tuple[tuple[str, ...], ...]  # host names, in the order they roll

    @property
    def hosts(self) -> list[str]:
        return [h for b in self.batches for h in b]


def order(cluster: Cluster, role: str, only: Sequence[str] = ()) -> list[Host]:
    """The hosts of ROLE to roll, in roles.yaml's order, a db primary last (replicas first). `only`: these hosts of
    the role (PlanError naming any that is not one of them). PlanError when the role has no host."""
    tier = list(cluster.by_role(role))
    if not tier:
        roles = sorted({h.role for h in cluster.hosts})
        raise PlanError(f"no host has the role {role!r} (roles: {', '.join(roles)})")
    names = {h.name for h in tier}
    stray = [n for n in only if n not in names]
    if stray:
        raise PlanError(f"{', '.join(stray)}: not a {role} host (the {role} hosts: {', '.join(sorted(names))})")
    chosen = [h for h in tier if not only or h.name in only]
    return sorted(chosen, key=lambda h: h.is_primary)  # stable: replicas keep their order, the primary goes last


def batches(role: str, names: Sequence[str], size: int) -> tuple[tuple[str, ...], ...]:
    """NAMES cut into batches of `size` hosts (1 for lb and db). ValueError for a size below 1."""
    if size < 1:
        raise ValueError(f"--batch must be 1 or more, not {size}")
    if role in ONE_AT_A_TIME:
        size = 1
    return tuple(tuple(names[i : i + size]) for i in range(0, len(names), size))


def plan(cluster: Cluster, role: str, only: Sequence[str] = (), batch: int = 1) -> Plan:
    """The Plan for `./inv roll --role ROLE [--hosts ...] [--batch N]`; PlanError or ValueError as above."""
    return Plan(role, batches(role, [h.name for h in order(cluster, role, only)], batch))


def refusal(role: str, tier: Iterable[str], batch: Iterable[str], healthy: Iterable[str]) -> str | None:
    """Why taking BATCH out of its tier would leave the tier without a healthy host, or None when another healthy
    host serves meanwhile. `tier`: every host of the role; `healthy`: those healthy now."""
    out = set(batch)
    serving = sorted(set(healthy) & (set(tier) - out))
    if serving:
        return None
    who = ", ".join(sorted(out))
    unhealthy = sorted(set(tier) - out - set(healthy))
    rest = f" ({', '.join(unhealthy)} not healthy)" if unhealthy else ""
    return (
        f"{who}: rolling it would leave no healthy {role} host{rest}; fix the tier first, or --allow-outage to roll "
        "anyway"
    )
