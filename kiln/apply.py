"""`./inv plan` and `./inv apply`: a roles.yaml change taken to the running cluster, without a server restart.

apply: validate the file, plan it against what the server publishes (kiln/plan.py; every changed config through
its checker: a refusal publishes nothing), then publish it (POST /v1/publish). Removing hosts takes two
generations: the first drains them (out of every HAProxy and nginx pool, still admitted by the firewalls and
the database, so requests in flight finish); once the running hosts run it, the second drops them from every
peer and revokes their credentials. Then it waits (bounded) until the running hosts run the new generation.
Hosts that are off converge when they come back; a host that cannot apply a generation keeps the one before
and says why (./inv hosts, the dashboard).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln import fleet
from kiln.model import Cluster, InvalidRoles, parse_roles
from kiln.operator import Server, ServerError
from kiln.plan import Plan, format_plan, make_plan
from kiln.secrets import SecretStore

PHASE_TIMEOUT = 300.0  # seconds to wait for the running hosts to run a generation


class NotPublished(Exception):
    """The change was refused or stopped before it was done; the message says where it stands."""


@dataclass
class Applied:
    """What an apply did: generations published and seconds from each publish until every running host ran it."""

    plan: Plan
    generations: list[int] = field(default_factory=list)
    converged_seconds: dict[int, float] = field(default_factory=dict)
    host_seconds: dict[int, dict[str, float]] = field(default_factory=dict)  # generation -> host -> seconds to run it
    added: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    behind: list[str] = field(default_factory=list)  # running hosts not on the final generation when the wait ended


def published(server: Server) -> tuple[Cluster, int, tuple[tuple[str, str, str], ...]]:
    """What the server publishes now: its cluster, its generation and the hosts it drains (name, role, ip)."""
    answer = server.get("/v1/published")
    if not answer.get("roles"):
        raise ServerError("the server does not say which roles it publishes: restart it with this kiln (./inv serve)")
    try:
        cluster = parse_roles(answer["roles"])
    except InvalidRoles as e:
        raise ServerError(f"the published roles no longer parse: {e.problems[0].format()}") from None
    retiring = tuple((r["name"], r["role"], r["ip"]) for r in answer.get("retiring", []))
    return cluster, int(answer["generation"]), retiring


def plan_for(server: Server, wanted: Cluster, secrets: SecretStore, *, check: bool = True) -> Plan:
    current, generation, retiring = published(server)
    return make_plan(current, generation, wanted, retiring=retiring, secrets=secrets, check=check)


def _publish(server: Server, text: str, retiring: list[str]) -> dict[str, Any]:
    status, answer = server.post("/v1/publish", {"roles": text, "retiring": retiring})
    if status == 422:
        raise NotPublished("the server refused the roles:\n  " + "\n  ".join(answer.get("problems", [])))
    if status != 200:
        raise NotPublished(f"publishing failed: HTTP {status}: {answer}")
    return dict(answer)


def _wait(
    server: Server, generation: int, timeout: float, say: Callable[[str], None], took: dict[str, float]
) -> fleet.Fleet:
    """Wait for the running hosts to run `generation`; `took` gets each host's seconds since the wait began."""
    seen: dict[str, int | None] = {}
    began = time.monotonic()

    def progress(f: fleet.Fleet) -> None:
        for h in f.running():
            if seen.get(h["name"]) != h.get("generation"):
                seen[h["name"]] = h.get("generation")
                if (h.get("generation") or 0) >= generation:
                    took.setdefault(h["name"], round(time.monotonic() - began, 1))
                    say(f"  {h['name']} runs generation {generation} ({took[h['name']]:.0f} s)")
        for h in f.failed(generation):
            if seen.get(h["name"] + "!") is None:
                seen[h["name"] + "!"] = generation
                say(f"  {h['name']} could not apply it: {h.get('converge_error')}")

    return fleet.wait_for(server, generation, timeout, progress=progress)


def apply_roles(
    server: Server,
    text: str,
    secrets: SecretStore,
    *,
    wait: bool = True,
    timeout: float = PHASE_TIMEOUT,
    check: bool = True,
    say: Callable[[str], None] = print,
) -> Applied:
    """Publish `text` (roles.yaml) to the running server, draining removed hosts first. Raises InvalidRoles for
    a bad file, NotPublished when the change was refused (a checker, the server) or stopped halfway (a host
    could not apply the drain generation: it stays published, safe, and apply can be run again)."""
    wanted = parse_roles(text)
    current, generation, retiring = published(server)
    plan = make_plan(current, generation, wanted, retiring=retiring, secrets=secrets, check=check)
    for line in format_plan(plan, source="roles.yaml", diffs=False):
        say(line)
    if plan.refusals:
        raise NotPublished("a checker refused a config: nothing was published")
    applied = Applied(plan)
    removed = plan.removed
    if removed and set(removed) != {r[0] for r in retiring}:
        answer = _publish(server, text, removed)
        drain = int(answer["generation"])
        applied.generations.append(drain)
        applied.added += answer["added"]
        say(f"generation {drain}: draining {', '.join(removed)} (out of every pool, still admitted)")
        started = time.monotonic()
        state = _wait(server, drain, timeout, say, applied.host_seconds.setdefault(drain, {}))
        applied.converged_seconds[drain] = round(time.monotonic() - started, 1)
        if state.failed(drain):
            names = ", ".join(h["name"] for h in state.failed(drain))
            raise NotPublished(f"{names} could not apply the drain generation {drain}; it stays published (safe)")
        if state.behind(drain):
            say(f"  not running it yet (off?): {', '.join(state.behind(drain))}; they converge when they come back")
    answer = _publish(server, text, [])
    final = int(answer["generation"])
    applied.generations.append(final)
    applied.added += [n for n in answer["added"] if n not in applied.added]
    applied.retired = list(answer["retired"])
    if not answer["changed"]:
        say(f"generation {final} already publishes this: no changes")
        return applied
    say(f"generation {final} published")
    if applied.added:
        say(f"  new hosts: {', '.join(applied.added)}: power them on; they install and join")
    if applied.retired:
        say(f"  retired: {', '.join(applied.retired)} (credentials revoked: power them off)")
    if wait:
        started = time.monotonic()
        state = _wait(server, final, timeout, say, applied.host_seconds.setdefault(final, {}))
        applied.converged_seconds[final] = round(time.monotonic() - started, 1)
        say(fleet.summary(state))
        applied.behind = state.behind(final)
        if state.failed(final):
            names = ", ".join(h["name"] for h in state.failed(final))
            raise NotPublished(f"{names} could not apply generation {final} and run the one before")
    return applied


def plan_command(server: Server, text: str, secrets: SecretStore, *, diffs: bool = True, check: bool = True) -> int:
    """`./inv plan`: 0 (and "no changes" when nothing changes), 1 for a bad file, a refused config or no server."""
    try:
        wanted = parse_roles(text)
        plan = plan_for(server, wanted, secrets, check=check)
    except InvalidRoles as e:
        for problem in e.problems:
            print(problem.format(), file=sys.stderr)
        return 1
    except ServerError as e:
        print(f"plan: {e}", file=sys.stderr)
        return 1
    for line in format_plan(plan, source="roles.yaml", diffs=diffs):
        print(line)
    return 1 if plan.refusals else 0


def apply_command(
    server: Server,
    text: str,
    secrets: SecretStore,
    *,
    wait: bool = True,
    timeout: float = PHASE_TIMEOUT,
    check: bool = True,
) -> int:
    """`./inv apply`: 0 when published (and, with wait, every running host runs it), 1 when refused or a host
    could not apply it, 2 when hosts were still behind at the timeout."""
    try:
        applied = apply_roles(server, text, secrets, wait=wait, timeout=timeout, check=check)
    except InvalidRoles as e:
        for problem in e.problems:
            print(problem.format(), file=sys.stderr)
        print("apply: nothing was published", file=sys.stderr)
        return 1
    except (ServerError, NotPublished) as e:
        print(f"apply: {e}", file=sys.stderr)
        return 1
    if applied.behind:
        print(f"apply: still behind after {timeout:.0f} s: {', '.join(applied.behind)}", file=sys.stderr)
        return 2
    return 0
