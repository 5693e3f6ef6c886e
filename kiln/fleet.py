"""The running fleet as the server sees it: which generation each host runs, whether the cluster converged, and
`./inv hosts`. Hosts report the generation they run (their converge poll names it; kiln/server/app.py)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from kiln.operator import Server, ServerError

WAIT_POLL = 2.0  # seconds between two looks while waiting for a generation


@dataclass(frozen=True)
class Fleet:
    """One answer of GET /v1/hosts: the generation served, every listed host, the retiring and the retired."""

    generation: int
    hosts: list[dict[str, Any]]
    retiring: list[str]
    retired: list[dict[str, Any]]
    raw: dict[str, Any]

    @classmethod
    def of(cls, answer: dict[str, Any]) -> Fleet:
        return cls(
            generation=int(answer.get("generation") or 0),
            hosts=list(answer["hosts"]),
            retiring=list(answer.get("retiring", [])),
            retired=list(answer.get("retired", [])),
            raw=answer,
        )

    def running(self) -> list[dict[str, Any]]:
        """The hosts that finished their first boot: they follow new generations."""
        return [h for h in self.hosts if h["state"] == "joined"]

    def behind(self, generation: int) -> list[str]:
        """Running hosts that do not run `generation` (or a newer one) yet and did not fail to apply it."""
        return [
            h["name"]
            for h in self.running()
            if (h.get("generation") or 0) < generation and not failed_at(h, generation)
        ]

    def failed(self, generation: int) -> list[dict[str, Any]]:
        """Running hosts that could not apply `generation`: they keep running the one before."""
        return [h for h in self.running() if failed_at(h, generation)]

    def converged(self) -> bool:
        return not self.behind(self.generation) and not self.failed(self.generation)


def failed_at(host: dict[str, Any], generation: int) -> bool:
    return (host.get("generation") or 0) < generation and str(host.get("converge_error") or "").startswith(
        f"generation {generation}:"
    )


def fetch(server: Server) -> Fleet:
    return Fleet.of(server.get("/v1/hosts?timeline=0"))


def wait_for(
    server: Server,
    generation: int,
    timeout: float,
    *,
    progress: Callable[[Fleet], None] = lambda fleet: None,
) -> Fleet:
    """Ask until every running host runs `generation` or failed to apply it, at most `timeout` seconds; the last
    answer (its behind() says who is still behind after the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        fleet = fetch(server)
        progress(fleet)
        if not fleet.behind(generation) or time.monotonic() >= deadline:
            return fleet
        time.sleep(min(WAIT_POLL, max(0.0, deadline - time.monotonic())))


def table(fleet: Fleet) -> Table:
    t = Table(title=f"generation {fleet.generation}", title_justify="left")
    for col in ("host", "role", "ip", "state", "generation", "converged", "detail"):
        t.add_column(col)
    for h in fleet.hosts:
        detail = h.get("converge_error") or ((h.get("last_event") or {}).get("detail") or "")
        running = h["state"] == "joined"
        converged = ("yes" if h.get("converged") else "no") if running else "-"
        t.add_row(
            h["name"],
            h["role"],
            h["ip"],
            h["state"],
            str(h.get("generation") or "-"),
            converged,
            detail[:70],
        )
    for name in fleet.retiring:
        t.add_row(name, "", "", "retiring", "-", "-", "drained: out of every pool, still admitted")
    for r in fleet.retired:
        role, _, rest = str(r.get("was", "")).partition(" ")
        t.add_row(r["name"], role, rest.split(" ")[0] if rest else "", "retired", "-", "-", "credential revoked")
    return t


def summary(fleet: Fleet) -> str:
    running = fleet.running()
    done = [h for h in running if h.get("converged")]
    failed = fleet.failed(fleet.generation)
    text = f"generation {fleet.generation}: {len(done)}/{len(running)} running hosts converged"
    waiting = [h["name"] for h in fleet.hosts if h["state"] != "joined"]
    if failed:
        text += "; could not apply it: " + ", ".join(h["name"] for h in failed)
    if waiting:
        text += "; not running yet: " + ", ".join(waiting)
    return text


def hosts_command(server: Server, *, as_json: bool = False, wait: bool = False, timeout: float = 300.0) -> int:
    """`./inv hosts`: 0 when every running host runs the served generation, 1 when one failed to apply it,
    2 when some are still behind (after --wait: the timeout passed)."""
    console = Console(width=None if sys.stdout.isatty() else 200)
    try:
        fleet = fetch(server)
        if wait:
            fleet = wait_for(server, fleet.generation, timeout)
    except ServerError as e:
        print(f"hosts: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(fleet.raw, indent=2))
    else:
        console.print(table(fleet))
        console.print(summary(fleet), highlight=False)
    if fleet.failed(fleet.generation):
        return 1
    return 0 if fleet.converged() else 2
