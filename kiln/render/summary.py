"""SUMMARY.md next to a render: the cluster on one page, for the review before any machine boots and for whoever
wires the rack: every host with its role, address and MAC, the firewall rules a host declares for its added
addresses and VLANs, and per role what it listens on, for whom, and which services it runs. Everything here comes
from the same Renderer the bundles come from."""

from __future__ import annotations

from kiln.model import Host
from kiln.render import Renderer
from kiln.roles import common, hostfirewall
from kiln.roles.spec import Firewall, Rule


def _who(saddr: str) -> str:
    """A firewall rule's source for a reader rather than nft ($WEB_NODES: the tier set of the web hosts)."""
    if not saddr:
        return "anyone"
    if saddr == "$LB_PEERS":
        return "the other lb hosts"
    if saddr.startswith("$") and saddr.endswith("_NODES"):
        return f"the {saddr[1:-6].lower()} hosts"
    return saddr


def _what(rule: Rule) -> str:
    """The rule's protocol and ports, "tcp 80, 443", or its protocol alone, "vrrp"."""
    ports = ", ".join(str(p) for p in rule.ports)
    return f"{rule.proto} {ports}" if ports else rule.proto


def _listens(rule: Rule) -> str:
    return f"{_what(rule)} from {_who(rule.saddr)}"


def _plain(addresses: str) -> str:
    """An nftables address or anonymous set for a reader: "{ 10.20.0.0/24, 10.50.0.0/16 }" -> "10.20.0.0/24, ..."."""
    return addresses.removeprefix("{ ").removesuffix(" }")


def _declared(firewall: Firewall) -> str:
    """A host's own rules (hosts[].network.allow) on one line: "in udp 514 from 10.20.0.0/24 to 10.20.0.21; ..."."""
    inbound = [f"in {_what(r)} from {_plain(r.saddr)} to {_plain(r.daddr)}" for r in firewall.inbound]
    return "; ".join(inbound + [f"out {_what(r)} to {_plain(r.daddr)}" for r in firewall.outbound])


def _extras(host: Host) -> str:
    """A host's own settings beyond name, role, address, MAC and disk (an lb's priority, a db's db_role)."""
    shown = [] if host.priority is None else [f"priority {host.priority}"]
    if host.db_role is not None:
        shown.append(host.db_role.value)
    if host.server_id is not None:
        shown.append(f"server_id {host.server_id}")
    return ", ".join(shown)


def summary_markdown(renderer: Renderer) -> str:
    """The page as Markdown text (ends with a newline)."""
    cluster = renderer.cluster
    net = cluster.network
    lines = [
        f"# {cluster.name}: {cluster.domain}",
        "",
        f"{len(cluster.hosts)} hosts in {net.subnet}, gateway {net.gateway}, VIP {net.vip}; "
        f"admin network {', '.join(str(a) for a in net.admin)}; provisioning {cluster.provisioning_url}.",
        "",
        "| host | role | address | MAC | disk | settings |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {h.name} | {h.role} | {h.ip} | {h.mac} | {h.disk.text()} | {_extras(h)} |" for h in cluster.hosts]
    declared = {h.name: _declared(hostfirewall.rules(h.network)) for h in cluster.hosts}
    if any(declared.values()):
        lines += ["", "Firewall rules hosts declare for their added addresses and VLANs (hosts[].network.allow):", ""]
        lines += [f"- {name}: {rules}" for name, rules in declared.items() if rules]
    for role_name in cluster.roles_used:
        first = cluster.by_role(role_name)[0]
        c, _, role, _ = renderer.variables(first)
        firewall = renderer.role_firewall(first, c)  # the role's: not `first`'s own rules (listed above)
        admin_ports = ", ".join(str(p) for p in (22, c.node_exporter_port, *firewall.admin_ports))
        units = sorted({s.unit for s in common.SERVICES + role.services})
        lines += [
            "",
            f"## {role_name}: {role.summary}",
            "",
            f"- hosts: {', '.join(h.name for h in cluster.by_role(role_name))}",
            f"- listens: {'; '.join(_listens(r) for r in firewall.inbound) or 'nothing beyond the admin ports'}",
            f"- admin network: tcp {admin_ports} (SSH, exporters)",
            f"- services: {', '.join(units)}",
        ]
    return "\n".join(lines) + "\n"
