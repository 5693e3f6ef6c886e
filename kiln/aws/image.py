"""The image a role publishes: images/<role>/<role>.raw and what its build manifest says about it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


class ImageError(Exception):
    """The image file is missing, or does not match its manifest."""


@dataclass(frozen=True)
class RoleImage:
    role: str
    path: Path
    size: int
    sha256: str  # hex, of the whole raw file
    from_manifest: bool  # False: no manifest.json, the sha256 was computed here


def locate(images: Path, role: str) -> RoleImage:
    """images/<role>/<role>.raw with the size and sha256 from images/<role>/manifest.json (computed if absent)."""
    path = images / role / f"{role}.raw"
    if not path.is_file():
        raise ImageError(f"{path}: no such image (build it with ./inv build --role {role})")
    size = path.stat().st_size
    manifest = images / role / "manifest.json"
    if manifest.is_file():
        try:
            entry = json.loads(manifest.read_text())["files"][path.name]
            sha, listed = str(entry["sha256"]).lower(), int(entry["size"])
        except (ValueError, KeyError, TypeError) as e:
            raise ImageError(f"{manifest}: no files.{path.name}.sha256/size ({e})") from None
        if listed != size:
            raise ImageError(f"{path}: {size} bytes, but {manifest} says {listed}: rebuild the image")
        return RoleImage(role, path, size, sha, from_manifest=True)
    return RoleImage(role, path, size, sha256_file(path), from_manifest=False)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()
