"""`./inv render --out DIR`: every host's bundle and files as a tree to read and diff before any machine boots.

    DIR/<host>/bundle.json            the bundle as the server would sign it (secrets by reference), indented
    DIR/<host>/root/<absolute path>   every file the bundle writes, with its mode
    DIR/_shared/<sha256>              each cluster-wide content once; the hosts' copies are hard links to it
    DIR/SUMMARY.md                    the cluster on one page: hosts, roles, addresses, MACs, ports, services

Only what changed is written; what an earlier render left for a host or content that is gone is removed.
A host seen for the first time is written into a temporary directory renamed into place whole; a host whose
bundle.json and file list are unchanged is not read further. Large clusters are written by one process per
CPU (forked after the cluster is parsed: a 10,000-host cluster is about 100,000 files).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from kiln.bundle import Bundle
from kiln.fsutil import ensure_file
from kiln.render import Renderer
from kiln.render.summary import summary_markdown

SHARED = "_shared"  # not a host name: host names start with a letter
BUNDLE = "bundle.json"
SUMMARY = "SUMMARY.md"  # a file, so never taken for a host's directory
PARALLEL_FROM = 500  # hosts; below this one process is faster than forking


@dataclass
class Written:
    """What a render wrote: file counts, and by name the hosts it wrote afresh, those whose tree changed (with the
    paths that did: "bundle.json", a file's absolute path, "-PATH" for one removed) and those it removed."""

    files: int = 0
    changed: int = 0
    new: list[str] = field(default_factory=list)
    changed_files: dict[str, list[str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def add(self, other: Written) -> None:
        self.files += other.files
        self.changed += other.changed
        self.new += other.new
        self.changed_files.update(other.changed_files)
        self.removed += other.removed


def write_tree(renderer: Renderer, out: Path, *, workers: int | None = None) -> Written:
    """Render every host of `renderer`'s cluster into `out`; return how many files it holds and how many changed."""
    hosts = renderer.cluster.hosts
    out.mkdir(parents=True, exist_ok=True)
    for role in renderer.cluster.roles_used:  # every cluster-wide content is known before any host is written
        renderer.bundle(renderer.cluster.by_role(role)[0])
    stats = Written()
    shared_dir = out / SHARED
    for digest, content in renderer.shared.items():
        mode = int(renderer.shared_modes[digest], 8)
        stats.changed += ensure_file(shared_dir / digest, content.encode(), mode, sync=False)
    workers = workers or (min(os.cpu_count() or 1, 4) if len(hosts) >= PARALLEL_FROM else 1)
    names = [h.name for h in hosts]
    if workers == 1:
        stats.add(_write_hosts(renderer, names, out))
    else:
        stats.add(_in_processes(renderer, names, out, workers))
    _remove_stale(shared_dir, {shared_dir / d for d in renderer.shared})
    wanted = set(names)
    for old in sorted(out.iterdir()):
        if old.name not in wanted and old.is_dir() and (old / BUNDLE).exists():
            shutil.rmtree(old)  # a host removed from roles.yaml; only directories this command made
            stats.removed.append(old.name)
    stats.changed += ensure_file(out / SUMMARY, summary_markdown(renderer).encode(), sync=False)
    order = {name: i for i, name in enumerate(names)}  # roles.yaml's order, whichever process wrote the host
    stats.new.sort(key=order.__getitem__)
    stats.changed_files = dict(sorted(stats.changed_files.items(), key=lambda item: order[item[0]]))
    return stats


def _in_processes(renderer: Renderer, names: list[str], out: Path, workers: int) -> Written:
    """Fork `workers` children, each writing every workers-th host; they inherit the parsed cluster."""
    children: list[tuple[int, int]] = []
    for k in range(workers):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: write its share, report its counts on the pipe, exit without cleanup
            os.close(read)
            code = 0
            try:
                done = _write_hosts(renderer, names[k::workers], out)
                os.write(write, json.dumps(asdict(done)).encode())
            except BaseException as e:  # reported by the parent, which exits non-zero
                os.write(write, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        children.append((pid, read))
    total, errors = Written(), []
    for pid, read in children:
        with os.fdopen(read, "rb") as pipe:
            report = json.loads(pipe.read() or b'{"error": "no report"}')
        os.waitpid(pid, 0)
        if "error" in report:
            errors.append(report["error"])
        else:
            total.add(Written(**report))
    if errors:
        raise OSError(f"writing the render failed: {'; '.join(errors)}")
    return total


def _write_hosts(renderer: Renderer, names: Iterable[str], out: Path) -> Written:
    stats = Written()
    for name in names:
        stats.add(_write_host(out / name, renderer.bundle(renderer.cluster.host(name)), out / SHARED))
    return stats


def _pretty(bundle: Bundle) -> bytes:
    """Indented for reading and diffing, keys sorted as in the signed bundle. orjson encodes dataclasses itself but
    sorts only dict keys, so it encodes twice: still half the time of building the dict in Python."""
    plain = orjson.loads(orjson.dumps(bundle))
    return orjson.dumps(plain, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


def _write_host(host_dir: Path, bundle: Bundle, shared_dir: Path) -> Written:
    text = _pretty(bundle)
    if not host_dir.exists():
        return _write_new_host(host_dir, bundle, text, shared_dir)
    targets = [f"{host_dir}/root/{f.path.lstrip('/')}" for f in bundle.files]  # os.walk's own spelling
    if _unchanged(str(host_dir), text, set(targets)):
        return Written(files=len(bundle.files))
    changed = [BUNDLE] if ensure_file(host_dir / BUNDLE, text, sync=False) else []
    for f, target in zip(bundle.files, map(Path, targets), strict=True):
        if f.shared:
            wrote = _link(shared_dir / f.shared, target)
        else:
            wrote = ensure_file(target, f.content.encode(), int(f.mode, 8), sync=False)
        if wrote:
            changed.append(f.path)
    root = host_dir / "root"
    for gone in _remove_stale(host_dir, {Path(t) for t in targets} | {host_dir / BUNDLE}):
        changed.append(f"-/{gone.relative_to(root)}" if gone.is_relative_to(root) else f"-{gone.name}")
    return Written(files=len(bundle.files), changed=len(changed), changed_files={host_dir.name: changed})


def _unchanged(host_dir: str, text: bytes, targets: set[str]) -> bool:
    """bundle.json holds exactly `text` and the tree holds exactly the files it names: the files were written
    from this very bundle, so they are not read again (a 10,000-host re-render reads 10,000 files, not 100,000).
    `targets`: absolute file paths as strings, as os.walk joins them."""
    try:
        with open(f"{host_dir}/{BUNDLE}", "rb") as held:
            if held.read() != text:
                return False
    except FileNotFoundError:
        return False
    present = {os.path.join(d, n) for d, _, files in os.walk(f"{host_dir}/root") for n in files}
    return present == targets


def _write_new_host(host_dir: Path, bundle: Bundle, text: bytes, shared_dir: Path) -> Written:
    """A host seen for the first time: its whole tree in a temporary directory, then renamed into place.
    Plain strings and one mkdir per directory: at 10,000 hosts Path objects and makedirs' retries cost seconds."""
    temp = str(host_dir.with_name(f".{host_dir.name}.new-{os.getpid()}"))
    shutil.rmtree(temp, ignore_errors=True)
    paths = tuple(f.path.lstrip("/") for f in bundle.files)
    os.mkdir(temp)
    for directory in _directories(paths):
        os.mkdir(f"{temp}/{directory}")
    _create(f"{temp}/{BUNDLE}", text, 0o644)
    shared = str(shared_dir)
    for f, path in zip(bundle.files, paths, strict=True):
        if f.shared:
            os.link(f"{shared}/{f.shared}", f"{temp}/root/{path}")
        else:
            _create(f"{temp}/root/{path}", f.content.encode(), int(f.mode, 8))
    os.rename(temp, host_dir)
    return Written(files=len(bundle.files), changed=len(bundle.files) + 1, new=[host_dir.name])


@functools.cache
def _directories(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Every directory under a host's tree that these relative file paths need, parents first ("root" included);
    hosts of one role share one list."""
    needed = {"root"}
    for path in paths:
        parts = path.split("/")[:-1]
        needed.update("/".join(["root", *parts[: i + 1]]) for i in range(len(parts)))
    return tuple(sorted(needed, key=lambda d: (d.count("/"), d)))


def _create(path: str, data: bytes, mode: int) -> None:
    """A new file in a directory nobody else sees yet: created with its mode, no temp file needed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _link(blob: Path, target: Path) -> bool:
    """`target` as a hard link to `blob` (replacing whatever is there in one rename); whether it changed."""
    try:
        if os.path.samefile(blob, target):
            return False
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.link")
    temp.unlink(missing_ok=True)
    os.link(blob, temp)
    os.replace(temp, target)
    return True


def _remove_stale(directory: Path, wanted: set[Path]) -> list[Path]:
    """Remove every file under `directory` that is not `wanted`, and directories left empty; the files removed."""
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file() and path not in wanted:
            path.unlink()
            removed.append(path)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return sorted(removed)
