"""What each image is made of: its elements and DIB settings, from roles.yaml. No side effects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln import roles
from kiln.build.mirror import Mirror
from kiln.model import Cluster
from kiln.project import ROOT
from kiln.roles import common

ELEMENTS_DIR = ROOT / "elements"
IMAGES_DIR = ROOT / "images"


@dataclass(frozen=True)
class ImageSpec:
    """One role image: the elements DIB gets and the DIB_* settings they read."""

    role: str
    elements: tuple[str, ...]
    size: str  # roles.yaml image.size, e.g. 4G
    env: tuple[tuple[str, str], ...]  # sorted DIB_* settings that shape the image

    @property
    def name(self) -> str:
        return self.role

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


def roles_to_build(cluster: Cluster) -> tuple[str, ...]:
    """The roles some host in roles.yaml uses, in registry order."""
    return cluster.roles_used


def image_spec(cluster: Cluster, role: str, mirror: Mirror) -> ImageSpec:
    env = {
        "DIB_RELEASE": cluster.image.release,
        "DIB_DISTRIBUTION_MIRROR": mirror.archive,
        "DIB_DEBIAN_SECURITY_MIRROR": mirror.security,
        "DIB_DEBIAN_COMPONENTS": "main",
        "DIB_KILN_ADMIN_NETS": ",".join(str(n) for n in cluster.network.admin),
    }
    elements = common.ELEMENTS + roles.get(role).elements
    return ImageSpec(role, elements, cluster.image.size, tuple(sorted(env.items())))


def element_closure(names: tuple[str, ...], elements_dir: Path = ELEMENTS_DIR) -> tuple[str, ...]:
    """`names` and the kiln elements they depend on (element-deps), sorted; DIB's own elements are not ours to hash."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or not (elements_dir / name).is_dir():
            continue
        seen.add(name)
        deps = elements_dir / name / "element-deps"
        if deps.is_file():
            todo += [d.strip() for d in deps.read_text().splitlines() if d.strip() and not d.startswith("#")]
    return tuple(sorted(seen))


def size_in_gb(size: str) -> str:
    """roles.yaml `4G` / `1536M` as the GB number disk-image-create's --image-size takes."""
    number, unit = int(size[:-1]), size[-1]
    gb = number if unit == "G" else number / 1024
    return f"{gb:g}"
