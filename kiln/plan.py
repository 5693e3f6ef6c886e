"""`./inv plan`: what publishing a roles.yaml would do to the running cluster, host by host, before it is done.

Both sides are rendered here: what the server publishes now (GET /v1/published gives its roles text) and the
new file. Per host: added or removed; the files that change (a unified diff; any secret value masked); the
services the agent reloads or restarts for them (the bundle's restart_on); the join that runs again (its
parameters before and after). Every changed host's new configs go through their daemons' checkers
(kiln/render/check.py) where this machine can run them: a refusal is shown with the checker's words, and
`./inv apply` publishes nothing while there is one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kiln import bundle as b
from kiln.model import Cluster
from kiln.render import Rendered, render
from kiln.render.check import Checker, Refusal, missing_tools
from kiln.secrets import SecretMissing, SecretStore

MASK = "********"
UNIT_DIRS = ("/etc/systemd/system/", "/lib/systemd/system/")
Retiring = tuple[str, str, str]  # a host being drained: name, role, ip (GET /v1/published lists them)


@dataclass(frozen=True)
class HostPlan:
    name: str
    role: str
    ip: str
    change: str  # add | remove | change | same
    files: tuple[str, ...] = ()  # paths whose content, mode or owner change
    diff: tuple[str, ...] = ()  # unified diff lines of those files (secret values masked)
    services: tuple[str, ...] = ()  # "UNIT reload-or-restart" / "UNIT start" / "UNIT stop"
    join: tuple[str, ...] = ()  # "FIELD: OLD -> NEW" for a join that runs again
    other: tuple[str, ...] = ()  # directories, secrets, checks: one line each


@dataclass
class Plan:
    generation: int  # the generation published now
    hosts: list[HostPlan] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    checked: int = 0  # hosts whose configs went through their checkers
    unchecked: str = ""  # why configs were not checked here (empty: they were)

    @property
    def changes(self) -> list[HostPlan]:
        return [h for h in self.hosts if h.change != "same"]

    @property
    def removed(self) -> list[str]:
        return [h.name for h in self.hosts if h.change == "remove"]


def _text(rendered: Rendered, bundle: b.Bundle) -> dict[str, tuple[str, str, str, str]]:
    """path -> (content, mode, owner, group) of every file in the bundle."""
    return {f.path: (rendered.content(bundle, f.path), f.mode, f.owner, f.group) for f in bundle.files}


def _masker(values: Iterable[str]) -> Mapping[str, str]:
    return {v: MASK for v in sorted({v.strip() for v in values if v.strip()}, key=len, reverse=True)}


def _mask(line: str, masks: Mapping[str, str]) -> str:
    for value, mask in masks.items():
        line = line.replace(value, mask)
    return line


def _join_changes(old: b.Join | None, new: b.Join | None) -> tuple[str, ...]:
    if old == new:
        return ()
    if old is None or new is None or type(old) is not type(new):
        return (f"{getattr(new, 'kind', 'none')}: runs (was {getattr(old, 'kind', 'none')})",)
    lines = []
    for f in dataclasses.fields(new):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before != after:
            show = (lambda v: ", ".join(map(str, v)) or "(none)") if isinstance(after, tuple) else str
            lines.append(f"{new.kind} {f.name}: {show(before)} -> {show(after)}")
    return tuple(lines)


def _services(old: b.Bundle, new: b.Bundle, changed: set[str]) -> tuple[str, ...]:
    before = {s.unit for s in old.services}
    after = {s.unit for s in new.services}
    units = {p for p in changed if p.startswith(UNIT_DIRS)}
    lines = ["systemd daemon-reload"] if units else []
    for s in new.services:
        if s.unit not in before or not set(s.restart_on) & changed:
            continue
        restart = any(s.restarts_for(p) for p in changed)  # a reload keeps the old command line
        lines.append(f"{s.unit} restart (its command line may change)" if restart else f"{s.unit} reload-or-restart")
    lines += [f"{u} start" for u in sorted(after - before)]
    lines += [f"{u} stays as it runs (no longer in the bundle)" for u in sorted(before - after)]
    if any(p == "/etc/nftables.conf" or p.startswith("/etc/nftables.d/") for p in changed):
        lines.append("nftables ruleset reloaded (one transaction)")
    return tuple(lines)


def _admin_changes(old: b.Admin | None, new: b.Admin | None) -> list[str]:
    """The admin account's line: its name, the keys added and removed (by their comments, else their type)."""
    if old == new:
        return []
    if old is None or new is None or old.name != new.name:
        return [f"admin account: {old.name if old else '(none)'} -> {new.name if new else '(none)'}"]

    def label(key: str) -> str:
        parts = key.split(" ", 2)
        return parts[2] if len(parts) > 2 else f"{parts[0]} ...{parts[1][-8:]}"

    before, after = {k.split()[1]: k for k in old.keys}, {k.split()[1]: k for k in new.keys}
    added = [label(after[k]) for k in after if k not in before]
    removed = [label(before[k]) for k in before if k not in after]
    words = [f"+{', '.join(added)}"] if added else []
    words += [f"-{', '.join(removed)}"] if removed else []
    return [f"admin account {new.name} keys: {' '.join(words) or 'comments changed'}"]


def host_plan(name: str, old: Rendered, new: Rendered, masks: Mapping[str, str], labels: tuple[str, str]) -> HostPlan:
    """How one host that both sides list changes."""
    ob, nb = old.bundles[name], new.bundles[name]
    before, after = _text(old, ob), _text(new, nb)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    diff: list[str] = []
    for path in changed:
        a, z = before.get(path), after.get(path)
        if a and z and a[1:] != z[1:]:
            diff.append(f"{path}: mode/owner {' '.join(a[1:])} -> {' '.join(z[1:])}")
        if (a[0] if a else "") != (z[0] if z else ""):
            lines = difflib.unified_diff(
                (a[0] if a else "").splitlines(keepends=True),
                (z[0] if z else "").splitlines(keepends=True),
                f"{name}:{path} ({labels[0]})",
                f"{name}:{path} ({labels[1]})",
            )
            diff += [_mask(line.rstrip("\n"), masks) for line in lines]
    other = []
    if ob.directories != nb.directories:
        other.append("directories change")
    if [(s.name, s.path, s.mode, s.owner) for s in ob.secrets] != [
        (s.name, s.path, s.mode, s.owner) for s in nb.secrets
    ]:
        other.append("secrets: " + ", ".join(s.name for s in nb.secrets) + f" (values {MASK})")
    if ob.checks != nb.checks:
        other.append(f"health checks: {len(ob.checks)} -> {len(nb.checks)}")
    other += _admin_changes(ob.admin, nb.admin)
    join = _join_changes(ob.join, nb.join)
    services = _services(ob, nb, set(changed))
    same = not (changed or other or join or services)
    return HostPlan(
        name,
        nb.host.role,
        nb.host.ip,
        "same" if same else "change",
        tuple(changed),
        tuple(diff),
        services,
        join,
        tuple(other),
    )


def make_plan(
    published: Cluster,
    generation: int,
    wanted: Cluster,
    *,
    retiring: tuple[Retiring, ...] = (),
    secrets: SecretStore | None = None,
    check: bool = True,
) -> Plan:
    """What publishing `wanted` over `published` (drained: `retiring`) does. With `check`, every changed or added
    host's configs go through their checkers when this machine can run them (root, the daemons installed)."""
    old, new = render(published), render(wanted)
    masks = _masker(_secret_values(secrets, new, old))
    plan = Plan(generation)
    labels = (f"generation {generation}", "roles.yaml")
    for h in wanted.hosts:
        if h.name in old.bundles:
            plan.hosts.append(host_plan(h.name, old, new, masks, labels))
        else:
            plan.hosts.append(HostPlan(h.name, h.role, str(h.ip), "add"))
    for name, role, ip in [(h.name, h.role, str(h.ip)) for h in published.hosts] + [tuple(r) for r in retiring]:
        if name not in new.bundles:
            plan.hosts.append(HostPlan(name, role, ip, "remove"))
    if check:
        _check(plan, new, secrets)
    return plan


def _secret_values(secrets: SecretStore | None, *rendered: Rendered) -> list[str]:
    if secrets is None:
        return []
    values = set()
    for bundle in (bundle for r in rendered for bundle in r.bundles.values()):
        for name in bundle.secret_names():
            try:
                values.add(secrets.value(name, bundle.host.name))
            except SecretMissing:
                continue
    return list(values)


def _check(plan: Plan, new: Rendered, secrets: SecretStore | None) -> None:
    if os.geteuid() != 0:
        plan.unchecked = "not root (the checkers run in private namespaces)"
        return
    missing = missing_tools()
    if missing:
        plan.unchecked = f"missing {', '.join(missing)}"
        return
    names = [h.name for h in plan.hosts if h.change in ("add", "change")]
    with Checker() as checker:
        for name in names:
            bundle = new.bundles[name]
            values = _values_for(secrets, bundle)
            plan.refusals += checker.check(bundle, new.shared, values)
            plan.checked += 1


def _values_for(secrets: SecretStore | None, bundle: b.Bundle) -> dict[str, str]:
    if secrets is None:
        return {}
    values = {}
    for name in bundle.secret_names():
        try:
            values[name] = secrets.value(name, bundle.host.name)
        except SecretMissing:
            continue  # a checker that needs it says so
    return values


def format_plan(plan: Plan, *, source: str, diffs: bool = True) -> list[str]:
    """The plan as an operator reads it: one block per host that changes, then the checks and a summary."""
    out = [f"plan: {source} against the published generation {plan.generation}"]
    for h in plan.hosts:
        if h.change == "add":
            out.append(f"+ {h.name} ({h.role}, {h.ip}): new; power it on: it installs, joins, and its peers admit it")
        elif h.change == "remove":
            out.append(
                f"- {h.name} ({h.role}, {h.ip}): removed; first drained from every pool, then its access is "
                "removed from every peer and its credential revoked"
            )
        elif h.change == "change":
            out.append(f"~ {h.name} ({h.role}, {h.ip})")
            if h.files:
                out.append("    files:    " + ", ".join(h.files))
            for line in h.services:
                out.append(f"    service:  {line}")
            for line in h.join:
                out.append(f"    join:     {line}")
            for line in h.other:
                out.append(f"    also:     {line}")
            if diffs:
                out += [f"    {line}" for line in h.diff]
    for r in plan.refusals:
        out.append("REFUSED " + r.format())
    if plan.unchecked:
        out.append(f"configs not checked here: {plan.unchecked}")
    elif plan.checked:
        verdict = "refused" if plan.refusals else "passed"
        out.append(f"checks: the configs of {plan.checked} hosts went through their daemons' checkers: {verdict}")
    counts = {k: sum(1 for h in plan.hosts if h.change == k) for k in ("add", "remove", "change", "same")}
    if not plan.changes:
        out.append("no changes")
    else:
        out.append(
            f"summary: {counts['add']} to add, {counts['remove']} to remove, {counts['change']} to change, "
            f"{counts['same']} unchanged"
        )
    return out
