"""`./inv validate`, `render` and `keys`: functions that return an exit code and print for an operator."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from kiln import signing
from kiln.model import InvalidRoles
from kiln.project import Project
from kiln.render import Renderer
from kiln.render.output import write_tree
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
        f"({written.changed} changed) in {took:.2f}s"
    )
    return 0


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
