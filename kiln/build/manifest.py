"""images/<role>/manifest.json: what an image is (outputs with sha256 and size, packages, elements,
inputs hash, DIB version, build seconds, the cluster it is baked for) and whether it is still up to date."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.fsutil import write_atomic
from kiln.model import Cluster
from kiln.secrets import SecretStore

MANIFEST = "manifest.json"
BAKED = "baked"
# what ties an image to one cluster: an image baked with other values cannot enrol with, or trust, this cluster's server
TIED = ("cluster_id", "provisioning_url", "signing_key")


def baked(cluster: Cluster, store: SecretStore, roles: str) -> dict[str, str]:
    """The manifest's record of the cluster an image is baked for: its name and id, the provisioning URL and the
    signing key's sha256 (compared, TIED), and the roles file it was built from (shown). Reads `store`."""
    return {
        "cluster": cluster.name,
        "cluster_id": store.cluster_id(),
        "provisioning_url": cluster.provisioning_url,
        "signing_key": hashlib.sha256(store.signing_pub.read_bytes()).hexdigest(),
        "roles": roles,
    }


def built_for_another(data: Mapping[str, Any], expected: Mapping[str, str]) -> str | None:
    """Why an image (its manifest `data`) will not join `expected`'s cluster, or None when it will. An image whose
    manifest has no record (built by an older kiln) is taken as it is: it cannot tell."""
    got = data.get(BAKED)
    if not isinstance(got, dict):
        return None
    differ = [key.replace("_", " ") for key in TIED if got.get(key) != expected[key]]
    if not differ:
        return None
    return (
        f"it is baked for cluster {got.get('cluster')!r} at {got.get('provisioning_url')} (from {got.get('roles')}), "
        f"not {expected['cluster']!r} at {expected['provisioning_url']}: its {', '.join(differ)} differ"
    )


def file_entry(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "size": path.stat().st_size}


def dpkg_packages(dib_manifest: Path) -> dict[str, str]:
    """name → version of the installed packages, from DIB's dib-manifest-dpkg-<name> (JSON)."""
    data = json.loads(dib_manifest.read_text())
    return {p["package"]: p["version"] for p in data["packages"] if p.get("status", "").startswith("ii")}


def write(directory: Path, manifest: dict[str, Any]) -> None:
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")


def read(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def up_to_date(directory: Path, inputs_hash: str) -> bool:
    """The manifest was written for these inputs and every output it lists is there with its size.

    (Sizes, not hashes: re-hashing gigabytes would not fit the few seconds a no-change build may take.)
    """
    manifest = read(directory)
    if manifest is None or manifest.get("inputs_hash") != inputs_hash or not manifest.get("files"):
        return False
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return False
    return True
