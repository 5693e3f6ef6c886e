"""HAProxy on every load balancer, through the agent's runtime API subcommand (`firstboot haproxy ...`, run as
root over a Transport): take a web server out of rotation on all of them, put it back, see its status.

    lbs = Haproxies(transport, [lb1, lb2])
    lbs.drain("web1", timeout=30)     drained on every LB (sessions 0, maint) or RuntimeFailed
    lbs.ready("web1", timeout=60)     in rotation and UP on every LB, or RuntimeFailed
    lbs.status()                      -> {lb: {server: status}}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from firstboot.haproxy import BACKEND  # the agent's default, the rendered haproxy.cfg's pool
from kiln.model import Host
from kiln.roll.transport import Transport

AGENT = ("sudo", "-n", "firstboot", "haproxy")  # the agent's path in the images: /usr/local/bin/firstboot
SLACK = 30.0  # seconds beyond the agent's own bound for SSH and the agent's start


class RuntimeFailed(Exception):
    """A runtime API call failed on an LB; the message names the server, the LB and what it said."""


@dataclass(frozen=True)
class Haproxies:
    transport: Transport
    lbs: Sequence[Host]
    agent: tuple[str, ...] = AGENT

    def _call(self, lb: Host, args: list[str], timeout: float, server: str) -> str:
        try:
            ran = self.transport.run(lb, [*self.agent, *args], timeout + SLACK)
        except TimeoutError as e:
            raise RuntimeFailed(f"{server}: on {lb.name}: {e}") from None
        if ran.code == 255:
            raise RuntimeFailed(f"{server}: cannot reach {lb.name} over SSH: {ran.tail()}")
        if ran.code != 0:
            raise RuntimeFailed(f"{server}: on {lb.name}: {ran.tail()}")
        return ran.stdout

    def drain(self, server: str, timeout: float) -> None:
        """No new sessions to SERVER on any LB, its open ones finished (at most `timeout` seconds each), then maint.
        RuntimeFailed at the first LB that fails or whose bound runs out (the server is left draining there)."""
        for lb in self.lbs:
            self._call(lb, ["drain", server, "--backend", BACKEND, "--timeout", f"{timeout:g}"], timeout, server)

    def ready(self, server: str, timeout: float) -> None:
        """SERVER back in rotation on every LB and UP there (its health checks pass) within `timeout` seconds each;
        RuntimeFailed naming the LB otherwise."""
        for lb in self.lbs:
            self._call(lb, ["ready", server, "--backend", BACKEND, "--timeout", f"{timeout:g}"], timeout, server)

    def status_of(self, lb: Host) -> dict[str, str]:
        """{server: HAProxy's status} for the web pool on LB; RuntimeFailed naming the LB when it does not answer."""
        shown = json.loads(self._call(lb, ["show", "--json"], 10, "show") or "[]")
        return {s["name"]: s["status"] for s in shown if s["backend"] == BACKEND}

    def status(self) -> dict[str, dict[str, str]]:
        """LB name -> status_of(LB), for every LB."""
        return {lb.name: self.status_of(lb) for lb in self.lbs}

    def up_everywhere(self) -> set[str]:
        """The servers UP on every LB."""
        seen = self.status()
        sets = [{s for s, st in servers.items() if st.startswith("UP")} for servers in seen.values()]
        return set.intersection(*sets) if sets else set()
