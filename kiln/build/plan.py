"""What each image is made of: its elements and DIB settings, from roles.yaml. No side effects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.build.mirror import Mirror
from kiln.model import Cluster, Role

PROJECT = Path(__file__).resolve().parent.parent.parent
ELEMENTS_DIR = PROJECT / "elements"
IMAGES_DIR = PROJECT / "images"

BASE_ELEMENTS = ("kiln-base", "kiln-firstboot")
ROLE_ELEMENTS: dict[Role, tuple[str, ...]] = {
    Role.lb: ("kiln-lb",),
    Role.web: ("kiln-web",),
    Role.app: ("kiln-app",),
    Role.db: ("kiln-db",),
}


@dataclass(frozen=True)
class ImageSpec:
    """One role image: the elements DIB gets and the DIB_* settings they read."""

    role: Role
    elements: tuple[str, ...]
    size: str  # roles.yaml image.size, e.g. 4G
    env: tuple[tuple[str, str], ...]  # sorted DIB_* settings that shape the image

    @property
    def name(self) -> str:
        return self.role.value

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


def roles_to_build(cluster: Cluster) -> tuple[Role, ...]:
    """The roles some host in roles.yaml uses, in the model's order."""
    return tuple(r for r in Role if cluster.by_role(r))


def image_spec(cluster: Cluster, role: Role, mirror: Mirror) -> ImageSpec:
    env = {
        "DIB_RELEASE": cluster.image.release,
        "DIB_DISTRIBUTION_MIRROR": mirror.archive,
        "DIB_DEBIAN_SECURITY_MIRROR": mirror.security,
        "DIB_DEBIAN_COMPONENTS": "main",
        "DIB_KILN_ADMIN_NETS": ",".join(str(n) for n in cluster.network.admin),
    }
    return ImageSpec(role, BASE_ELEMENTS + ROLE_ELEMENTS[role], cluster.image.size, tuple(sorted(env.items())))


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
