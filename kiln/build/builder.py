"""Build one role image with diskimage-builder, or say it is up to date.

Outputs appear only whole: DIB writes into images/.work/<role>/; on success the raw and qcow2
files are renamed into images/<role>/ (the old manifest removed first, the new one written last),
so a reader that trusts manifest.json never sees a half-written image. On failure the outputs in
the work directory are dropped, the previous image stays as it was, and build.log keeps the
failed run for reading.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kiln import blockmap, freeze, roles
from kiln.build import dib, manifest
from kiln.build.inputs import inputs_hash
from kiln.build.mirror import Mirror
from kiln.build.plan import ELEMENTS_DIR, IMAGES_DIR, ImageSpec, element_closure, image_spec
from kiln.build.progress import Display
from kiln.build.stage import firstboot_stage
from kiln.model import Cluster
from kiln.project import ROOT
from kiln.run import CommandError, run
from kiln.secrets import SecretStore

DIB_TIMEOUT = 3600.0
AGENT_UNITS = tuple(ROOT / "firstboot" / unit for unit in freeze.UNITS)  # the agent's units, baked by kiln-firstboot


@dataclass(frozen=True)
class Outcome:
    name: str
    state: str  # built | up to date | failed
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class BuildEnv:
    """What every image build of one run shares."""

    cluster: Cluster
    mirror: Mirror
    store: SecretStore
    images: Path = IMAGES_DIR
    elements: Path = ELEMENTS_DIR
    agent: Path = IMAGES_DIR / "firstboot"
    agent_units: tuple[Path, ...] = AGENT_UNITS
    project: Path = ROOT  # where a role's image_inputs are (kilnapp/ for the app role)
    roles: str = "roles.yaml"  # the cluster file, as the manifest records it

    @property
    def work(self) -> Path:
        return self.images / ".work"


def role_inputs_hash(env: BuildEnv, spec: ImageSpec) -> str:
    files: dict[str, Path | None] = {
        "agent": env.agent,
        "signing.pub": env.store.signing_pub,
        "ca.pem": env.store.ca_pem,
        **{unit.name: unit for unit in env.agent_units},
    }
    for rel in roles.get(spec.role).image_inputs:
        files[rel] = env.project / rel
    settings = {
        "elements": list(spec.elements),
        "env": dict(spec.env),
        "size": spec.size,
        "provisioning_url": env.cluster.provisioning_url,
        "cluster_id": env.store.cluster_id(),
    }
    closure = [env.elements / n for n in element_closure(spec.elements, env.elements)]
    return inputs_hash(elements=closure, settings=settings, files=files, dib_version=dib.version())


def build_role(
    env: BuildEnv, role: str, display: Display, *, force: bool = False, cache: Path | None = None
) -> Outcome:
    """Build `role`'s image unless it is up to date. `cache`: DIB_IMAGE_CACHE for this run (DIB's default when
    None); builds running side by side need one each."""
    started = time.monotonic()
    spec = image_spec(env.cluster, role, env.mirror)
    name = spec.name
    out = env.images / name
    digest = role_inputs_hash(env, spec)
    if not force and manifest.up_to_date(out, digest):
        detail = _add_block_map(out, name)
        _add_baked(env, out)
        seconds = time.monotonic() - started
        display.set(name, "up to date", detail or None, seconds=seconds)
        return Outcome(name, "up to date", seconds, detail)

    work = env.work / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = work / "build.log"
    display.set(name, "building", "staging")
    try:
        extra = {"DIB_KILN_FIRSTBOOT_STAGE": str(_stage_firstboot(env, work))}
        if cache is not None:
            extra["DIB_IMAGE_CACHE"] = str(cache)
        stage = roles.get(role).stage
        if stage is not None:
            extra.update(stage(work, env.project, env.elements))
        error = _run_dib(
            dib.command(spec, work / name, log), dib.environment(spec, extra, env.elements), name, log, display
        )
    except Exception as e:  # staging failed before DIB ran; say what and keep the old image
        error = e
    seconds = time.monotonic() - started
    if error is not None:
        return _failed(env, name, work, log, display, seconds, error)

    display.set(name, "building", "manifest")
    files = {f"{name}.{ext}": work / f"{name}.{ext}" for ext in ("raw", "qcow2", "map")}
    block_map = blockmap.write(files[f"{name}.raw"], files[f"{name}.map"])
    data = {
        "role": name,
        "files": {fname: manifest.file_entry(path) for fname, path in files.items()},
        "blockmap": block_map.manifest_entry(f"{name}.map"),
        "inputs_hash": digest,
        "dib_version": dib.version(),
        "build_seconds": round(seconds, 1),
        "packages": manifest.dpkg_packages(work / f"{name}.d" / "dib-manifests" / f"dib-manifest-dpkg-{name}"),
        "elements": list(spec.elements),
        "settings": dict(spec.env),
        "size": spec.size,
        manifest.BAKED: manifest.baked(env.cluster, env.store, env.roles),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / manifest.MANIFEST).unlink(missing_ok=True)
    for fname, path in files.items():
        path.replace(out / fname)
    shutil.copyfile(log, out / "build.log")
    manifest.write(out, data)
    shutil.rmtree(work)
    display.set(name, "built", "done", seconds=seconds)
    return Outcome(name, "built", seconds)


def _add_baked(env: BuildEnv, out: Path) -> None:
    """An up-to-date image built before manifests said which cluster it is baked for gets the record: its inputs
    hash covers the cluster id, the provisioning URL and the signing key, so they are this run's."""
    data = manifest.read(out)
    if data is not None and manifest.BAKED not in data:
        data[manifest.BAKED] = manifest.baked(env.cluster, env.store, env.roles)
        manifest.write(out, data)


def _add_block_map(out: Path, name: str) -> str:
    """Images built before the installer used block maps get one without a rebuild: the map is read off
    the raw file, which is what a build does too."""
    data = manifest.read(out)
    if data is None or "blockmap" in data:
        return ""
    map_name = f"{name}.map"
    block_map = blockmap.write(out / f"{name}.raw", out / f".{map_name}.new")
    (out / f".{map_name}.new").replace(out / map_name)
    data["files"][map_name] = manifest.file_entry(out / map_name)
    data["blockmap"] = block_map.manifest_entry(map_name)
    manifest.write(out, data)
    return "block map added"


def _stage_firstboot(env: BuildEnv, work: Path) -> Path:
    return firstboot_stage(
        work / "firstboot-stage",
        agent_dir=env.agent,
        signing_pub=env.store.signing_pub,
        ca_pem=env.store.ca_pem,
        provisioning_url=env.cluster.provisioning_url,
        units=env.agent_units,
        cluster_id=env.store.cluster_id(),
    )


def _run_dib(argv: list[str], environ: dict[str, str], name: str, log: Path, display: Display) -> Exception | None:
    errors: list[Exception] = []

    def work() -> None:
        try:
            run(argv, env=environ, timeout=DIB_TIMEOUT)
        except CommandError as e:
            errors.append(e)

    worker = threading.Thread(target=work, name=f"dib-{name}", daemon=True)
    worker.start()
    display.follow(name, log, worker)
    worker.join()
    return errors[0] if errors else None


def _failed(
    env: BuildEnv, name: str, work: Path, log: Path, display: Display, seconds: float, error: Exception
) -> Outcome:
    phase = dib.last_phase(log)
    out = env.images / name
    out.mkdir(parents=True, exist_ok=True)
    kept = out / "build.log"
    last = ""
    if log.exists():
        shutil.copyfile(log, kept)
        last = dib.tail(kept)
    shutil.rmtree(work, ignore_errors=True)
    display.set(name, "failed", phase, seconds=seconds)
    detail = f"{name}: build failed in phase {phase} after {seconds:.0f}s: {_first_line(error)}"
    if last:
        detail += f"\nlast lines of {_rel(kept)}:\n{last}"
    else:
        detail += f"\n{error}"
    display.print(detail)
    return Outcome(name, "failed", seconds, detail)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
