"""`./inv build --role ROLE` and `./inv build-all`: freeze the agent, make sure the keys exist,
then build each image that is not up to date, with a progress display and a summary."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from kiln import roles
from kiln.build import installer
from kiln.build.builder import BuildEnv, Outcome, build_role
from kiln.build.mirror import MirrorNotFound, resolve
from kiln.build.plan import roles_to_build
from kiln.build.progress import Display
from kiln.model import Cluster
from kiln.project import Project
from kiln.run import CommandError
from kiln.secrets import SecretStore


def build(project: Project, *, role: str, force: bool = False) -> int:
    """Build one role's image (exit 0 when built or up to date)."""
    return _build(project, [role], force=force, with_installer=False)


def build_all(project: Project, *, force: bool = False) -> int:
    """Build every role roles.yaml uses, then the PXE installer."""
    return _build(project, None, force=force, with_installer=True)


def _build(project: Project, names: list[str] | None, *, force: bool, with_installer: bool) -> int:
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
            env = prepare(cluster, images=project.images, secrets=project.secrets)
        except (MirrorNotFound, CommandError, FreezeFailed) as e:
            print(f"build: {e}", file=sys.stderr)
            return 1
        with Display(labels) as display:
            for role in wanted:
                outcomes.append(build_role(env, role, display, force=force))
            if with_installer:
                outcomes.append(installer.build(env, display, force=force))
    failed = [o for o in outcomes if o.state == "failed"]
    summary = ", ".join(f"{o.name} {o.state}" for o in outcomes)
    print(f"{summary} in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


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


def prepare(cluster: Cluster, *, images: Path, secrets: Path) -> BuildEnv:
    """What a build needs before DIB runs: the keys, the frozen agent, the mirror."""
    store = SecretStore(secrets)
    store.ensure(cluster)
    freeze_agent(images / "firstboot")
    mirror = resolve(cluster.image.mirror, cluster.image.release)
    return BuildEnv(cluster=cluster, mirror=mirror, store=store, images=images, agent=images / "firstboot")


class FreezeFailed(Exception):
    pass


def freeze_agent(agent_dir: Path) -> None:
    """The freeze step (./inv freeze): it refreezes only when the agent's sources changed."""
    from kiln import freeze

    if freeze.freeze(agent_dir) != 0:
        raise FreezeFailed("freezing the agent failed (see above); every image bakes it in")
