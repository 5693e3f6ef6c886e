"""`./inv build --role ROLE` and `./inv build-all`: freeze the agent, make sure the keys exist,
then build each image that is not up to date, with a progress display and a summary.

The role images build side by side, one DIB run per core (at most `jobs`): most of a DIB run is one process
at a time (debootstrap, dpkg, mkinitramfs, AIDE's database, qemu-img), so on two cores two builds take about
the time of one. Each concurrent slot has its own DIB image cache (its apt archive): apt locks the archive
directory, and two chroots sharing it would fail on each other's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiln import roles
from kiln.build import devmapper, installer
from kiln.build.builder import BuildEnv, Outcome, build_role
from kiln.build.mirror import MirrorNotFound, resolve
from kiln.build.plan import roles_to_build
from kiln.build.progress import Display
from kiln.model import Cluster
from kiln.project import Project
from kiln.run import CommandError
from kiln.secrets import SecretStore

# DIB's cache (DIB_IMAGE_CACHE, or DIB's default); the first slot uses it, so one build at a time behaves as it
# always did, and the others have theirs inside it.
DIB_CACHE = Path(os.environ.get("DIB_IMAGE_CACHE") or Path.home() / ".cache" / "image-create")


def default_jobs() -> int:
    """DIB runs side by side: one per core, at most four (each holds a 2 GB image and its chroot)."""
    return max(1, min(os.cpu_count() or 1, 4))


def build(project: Project, *, role: str, force: bool = False) -> int:
    """Build one role's image (exit 0 when built or up to date)."""
    return _build(project, [role], force=force, with_installer=False, jobs=1)


def build_all(project: Project, *, force: bool = False, jobs: int | None = None) -> int:
    """Build every role roles.yaml uses, `jobs` at once (default: default_jobs()), then the PXE installer."""
    return _build(project, None, force=force, with_installer=True, jobs=jobs or default_jobs())


def cache_dir(slot: int) -> Path:
    """DIB's image cache (DIB_IMAGE_CACHE) for concurrent build slot `slot` (0, 1, ...)."""
    return DIB_CACHE if slot == 0 else DIB_CACHE / f"kiln-slot-{slot}"


def _build(project: Project, names: list[str] | None, *, force: bool, with_installer: bool, jobs: int) -> int:
    started = time.monotonic()
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    wanted = roles_to_build(cluster)
    if names is not None:
        unknown = [n for n in names if n not in roles.names()]
        if unknown:
            print(f"unknown role {', '.join(unknown)} (roles: {', '.join(roles.names())})", file=sys.stderr)
            return 2
        wanted = tuple(names)
    outcomes: list[Outcome] = []
    labels = [*wanted] + (["installer"] if with_installer else [])
    with one_build_at_a_time(project.images):
        try:
            env = prepare(cluster, images=project.images, secrets=project.secrets, roles=project.roles_shown)
        except (MirrorNotFound, CommandError, FreezeFailed) as e:
            print(f"build: {e}", file=sys.stderr)
            return 1
        with Display(labels) as display:
            outcomes += _build_roles(env, wanted, display, force=force, jobs=jobs)
            if with_installer:
                outcomes.append(installer.build(env, display, force=force))
    failed = [o for o in outcomes if o.state == "failed"]
    summary = ", ".join(f"{o.name} {o.state}" for o in outcomes)
    print(f"{summary} in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


def _build_roles(env: BuildEnv, wanted: tuple[str, ...], display: Display, *, force: bool, jobs: int) -> list[Outcome]:
    """Outcomes in `wanted`'s order; up to `jobs` DIB runs at once, each in a cache slot of its own."""
    workers = max(1, min(jobs, len(wanted)))
    slots: queue.SimpleQueue[int] = queue.SimpleQueue()  # which cache each running build holds
    for slot in range(workers):
        slots.put(slot)

    def one(role: str) -> Outcome:
        slot = slots.get()
        try:
            return build_role(env, role, display, force=force, cache=cache_dir(slot))
        finally:
            slots.put(slot)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="build") as pool:
            return list(pool.map(one, wanted))
    finally:
        # the stand-in's /dev/mapper goes once no build can be between its mkdir and its links
        devmapper.remove_empty_mapper_dir()


@contextlib.contextmanager
def one_build_at_a_time(images: Path) -> Iterator[None]:
    """An exclusive lock on images/.build.lock: two builds would share DIB's apt cache and swap outputs under
    each other, so a second one waits for the first (and says so)."""
    images.mkdir(parents=True, exist_ok=True)
    with open(images / ".build.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            print(f"waiting for the build already running ({holder}) to finish", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        yield


def prepare(cluster: Cluster, *, images: Path, secrets: Path, roles: str = "roles.yaml") -> BuildEnv:
    """What a build needs before DIB runs: the keys, the frozen agent, the mirror. `roles`: the cluster file as
    the manifests record it."""
    store = SecretStore(secrets)
    store.ensure(cluster)
    freeze_agent(images / "firstboot")
    mirror = resolve(cluster.image.mirror, cluster.image.release)
    return BuildEnv(cluster=cluster, mirror=mirror, store=store, images=images, agent=images / "firstboot", roles=roles)


class FreezeFailed(Exception):
    pass


def freeze_agent(agent_dir: Path) -> None:
    """The freeze step (./inv freeze): it refreezes only when the agent's sources changed."""
    from kiln import freeze

    if freeze.freeze(agent_dir) != 0:
        raise FreezeFailed("freezing the agent failed (see above); every image bakes it in")
