"""The inputs hash: everything that decides an image's content, so an unchanged role is not rebuilt.

It covers the files of the role's kiln elements (path, mode, content), the image's DIB settings
(roles.yaml image section, mirror, admin networks), the frozen agent and the trust material baked
with it, the app wheelhouse, and the diskimage-builder version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def tree_digest(root: Path) -> str:
    """sha256 over every file under `root`: relative path, executable bit, content; symlinks by target."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if not p.is_dir() or p.is_symlink()):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            h.update(f"L {rel} {os.readlink(path)}\n".encode())
            continue
        h.update(f"F {rel} {os.access(path, os.X_OK):d} {path.stat().st_size}\n".encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def inputs_hash(
    *, elements: Iterable[Path], settings: Mapping[str, object], files: Mapping[str, Path | None], dib_version: str
) -> str:
    """One digest of the element trees, the settings, named input files or trees (None: absent), DIB's version."""
    parts: dict[str, object] = {
        "elements": {p.name: tree_digest(p) for p in sorted(elements)},
        "settings": dict(settings),
        "files": {name: _digest(path) for name, path in sorted(files.items())},
        "dib_version": dib_version,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _digest(path: Path | None) -> str | None:
    if path is None or not path.exists():
        return None
    if path.is_dir():
        return tree_digest(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
