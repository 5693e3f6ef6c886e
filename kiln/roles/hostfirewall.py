"""The firewall rules a host declares for itself: roles.yaml hosts[].network.allow as nftables rules.

kiln's tier matrix (the role modules' Firewall) covers the cluster address `ip` alone; the addresses and VLANs a
host adds (kiln/roles/networkd.py) carry no cluster traffic, and the default-drop firewall drops everything over
them but what these rules accept. The renderer appends them to the role's rules in the host's nftables.conf.

    rules(network)  -> Firewall: `in` rules as inbound, `out` rules as outbound (empty without a network section)
"""

from __future__ import annotations

from kiln.model.cluster import Direction, HostNetwork
from kiln.roles.spec import Firewall, Rule


def _set(items: tuple[object, ...]) -> str:
    """One address or network as is, several as an anonymous nftables set: "{ 10.20.0.0/24, 10.50.0.0/16 }"."""
    return str(items[0]) if len(items) == 1 else "{ " + ", ".join(map(str, items)) + " }"


def rules(network: HostNetwork | None) -> Firewall:
    """The host's allow rules, in roles.yaml order: `in` accepts the peers on the host's added addresses (never on
    `ip`: the tier matrix is kiln's), `out` lets the host reach the peers' ports.

    Precondition: `network` is the model's, validated (kiln/model/netcheck.py `allow`): every rule has peers, and
    a host with an `in` rule has added addresses (else IndexError: there is no empty nftables set to render).
    Nothing else is checked here."""
    if network is None:
        return Firewall()
    addresses = tuple(dict.fromkeys(a.ip for a in network.added_addresses))
    by = {d: [a for a in network.allow if a.direction is d] for d in Direction}
    return Firewall(
        inbound=tuple(
            Rule(a.proto.value, a.ports, saddr=_set(a.peers), daddr=_set(addresses)) for a in by[Direction.inbound]
        ),
        outbound=tuple(Rule(a.proto.value, a.ports, daddr=_set(a.peers)) for a in by[Direction.outbound]),
    )
