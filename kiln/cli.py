"""`./inv validate`, `render`, `keys`, `plan`, `apply` and `hosts`: functions that return an exit code and print
for an operator."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from kiln import apply, fleet, signing
from kiln.model import InvalidRoles
from kiln.operator import Server
from kiln.project import Project
from kiln.render import Renderer
from kiln.render.output import SUMMARY, Written, write_tree
from kiln.secrets import SecretStore


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def validate(project: Project, *, as_json: bool = False) -> int:
    path = project.roles_shown
    try:
        cluster = project.cluster()
    except InvalidRoles as e:
        if as_json:
            print(json.dumps([p.as_dict() for p in e.problems], indent=2))
        else:
            for problem in e.problems:
                print(problem.format())
        return 1
    if as_json:
        print("[]")
    else:
        counts = ", ".join(f"{len(cluster.by_role(r))} {r}" for r in cluster.roles_used)
        print(f"{path}: valid: cluster {cluster.name}, {len(cluster.hosts)} hosts ({counts})")
    return 0


def render(project: Project, *, out: str) -> int:
    """DIR/<host>/bundle.json and DIR/<host>/root/<path> for every file; stale outputs of earlier renders go."""
    started = time.monotonic()
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    written = write_tree(Renderer(cluster), Path(out))
    took = time.monotonic() - started
    print(
        f"rendered {len(cluster.hosts)} hosts, {written.files} files into {out} "
        f"({written.changed} changed) in {took:.2f}s; the cluster on one page: {Path(out) / SUMMARY}"
    )
    for line in change_report(written):
        print(line)
    return 0


def change_report(written: Written, most: int = 40) -> list[str]:
    """What a render changed, one line per host, at most `most` lines per kind (then how many more): `+ HOST`
    (new), `~ HOST: PATH, ...` (its changed files; -PATH removed), `- HOST` (no longer in roles.yaml)."""

    def capped(lines: list[str]) -> list[str]:
        return lines[:most] + ([f"  ... and {len(lines) - most} more"] if len(lines) > most else [])

    changed = [f"  ~ {host}: {', '.join(paths)}" for host, paths in written.changed_files.items()]
    return (
        capped([f"  + {host}" for host in written.new])
        + capped(changed)
        + capped([f"  - {host}" for host in written.removed])
    )


def keys(project: Project, *, secrets: str | None = None) -> int:
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    store = SecretStore(Path(secrets) if secrets else project.secrets)
    created = store.ensure(cluster)
    for path in created:
        print(f"created {os.path.relpath(path)}")
    for note in store.notes:
        print(note)
    if not created and not store.notes:
        print(f"{os.path.relpath(store.root)}: nothing missing, nothing changed")
    key = signing.load_public_key(store.signing_pub.read_bytes())
    print(f"signing key {signing.fingerprint(key)}")
    problems = store.check_site(cluster)
    for problem in problems:
        _err(f"site certificate: {problem}")
    expires = None if problems else store.site_expires_soon()
    if expires:
        _err(f"site certificate: {store.site_pem} expires on {expires:%Y-%m-%d}: renew it")
    return 1 if problems else 0


def _server(project: Project, *, server: str | None, lab: bool, secrets: str | None) -> Server | None:
    """The provisioning server the operator commands talk to; with `lab`, the lab's (this process enters the lab's
    network namespace). None after saying why not."""
    cluster = project.load_or_report()
    if cluster is None:
        return None
    if lab:
        from kiln.lab import netns

        if not netns.exists():
            _err("the lab is down: ./inv lab up first")
            return None
        netns.enter()
    return Server.of(cluster, Path(secrets) if secrets else project.secrets, server)


def plan(
    project: Project,
    *,
    server: str | None = None,
    lab: bool = False,
    secrets: str | None = None,
    diff: bool = True,
    check: bool = True,
) -> int:
    target = _server(project, server=server, lab=lab, secrets=secrets)
    if target is None:
        return 1
    store = SecretStore(target.ca.parent)
    return apply.plan_command(target, project.roles_path.read_text(), store, diffs=diff, check=check)


def apply_roles(
    project: Project,
    *,
    server: str | None = None,
    lab: bool = False,
    secrets: str | None = None,
    wait: bool = True,
    timeout: float = 300.0,
    check: bool = True,
) -> int:
    target = _server(project, server=server, lab=lab, secrets=secrets)
    if target is None:
        _err("apply: nothing was published")
        return 1
    store = SecretStore(target.ca.parent)
    text = project.roles_path.read_text()
    return apply.apply_command(target, text, store, wait=wait, timeout=timeout, check=check)


def hosts(
    project: Project,
    *,
    server: str | None = None,
    lab: bool = False,
    secrets: str | None = None,
    as_json: bool = False,
    wait: bool = False,
    timeout: float = 300.0,
) -> int:
    target = _server(project, server=server, lab=lab, secrets=secrets)
    if target is None:
        return 1
    return fleet.hosts_command(target, as_json=as_json, wait=wait, timeout=timeout)
