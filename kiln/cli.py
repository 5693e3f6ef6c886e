"""What the Invoke tasks do, as functions that return an exit code and print for an operator."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from kiln import signing
from kiln.fsutil import write_atomic
from kiln.model import Cluster, InvalidRoles, Role, load_roles
from kiln.render import render_cluster
from kiln.secrets import SecretStore

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_ROLES = PROJECT / "roles.yaml"
DEFAULT_SECRETS = PROJECT / "secrets"


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def load_or_report(roles: str | os.PathLike[str] | None) -> Cluster | None:
    try:
        return load_roles(roles or DEFAULT_ROLES)
    except InvalidRoles as e:
        for problem in e.problems:
            _err(problem.format())
        return None


def validate(roles: str | None = None, *, as_json: bool = False) -> int:
    path = roles or os.path.relpath(DEFAULT_ROLES)
    try:
        cluster = load_roles(path)
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
        counts = ", ".join(f"{n} {r.value}" for r in Role if (n := len(cluster.by_role(r))))
        print(f"{path}: valid: cluster {cluster.name}, {len(cluster.hosts)} hosts ({counts})")
    return 0


def render(roles: str | None, out: str) -> int:
    """DIR/<host>/bundle.json and DIR/<host>/root/<path> for every file; stale outputs of earlier renders go."""
    started = time.monotonic()
    cluster = load_or_report(roles)
    if cluster is None:
        return 1
    bundles = render_cluster(cluster)
    out_dir = Path(out)
    changed = 0
    for name, bundle in bundles.items():
        host_dir = out_dir / name
        wanted = {host_dir / "bundle.json"}
        changed += write_atomic(host_dir / "bundle.json", json.dumps(bundle, indent=2, sort_keys=True).encode() + b"\n")
        for f in bundle["files"]:
            target = host_dir / "root" / f["path"].lstrip("/")
            wanted.add(target)
            changed += write_atomic(target, f["content"].encode(), int(f["mode"], 8))
        _remove_stale(host_dir, wanted)
    for old in out_dir.iterdir():
        if old.is_dir() and old.name not in bundles and (old / "bundle.json").exists():
            shutil.rmtree(old)  # a host removed from roles.yaml; only directories this command made
    files = sum(len(b["files"]) for b in bundles.values())
    took = time.monotonic() - started
    print(f"rendered {len(bundles)} hosts, {files} files into {out} ({changed} changed) in {took:.2f}s")
    return 0


def _remove_stale(host_dir: Path, wanted: set[Path]) -> None:
    for path in sorted(host_dir.rglob("*"), reverse=True):
        if path.is_file() and path not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def keys(roles: str | None = None, secrets_dir: str | None = None) -> int:
    cluster = load_or_report(roles)
    if cluster is None:
        return 1
    store = SecretStore(Path(secrets_dir) if secrets_dir else DEFAULT_SECRETS)
    created = store.ensure(cluster)
    for path in created:
        print(f"created {os.path.relpath(path)}")
    if not created:
        print(f"{os.path.relpath(store.root)}: nothing missing, nothing changed")
    missing = store.uncovered_names(cluster)
    if missing:
        _err(
            f"warning: the site certificate does not cover {', '.join(missing)} "
            "(roles.yaml changed since it was made); "
            f"remove {os.path.relpath(store.root / 'tls.pem')} and run ./inv keys again to reissue it"
        )
    key = signing.load_public_key(store.signing_pub.read_bytes())
    print(f"signing key {signing.fingerprint(key)}")
    return 0
