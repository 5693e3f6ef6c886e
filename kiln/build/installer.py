"""The PXE installer: a Debian kernel and a small busybox initramfs running elements/kiln-installer/static/init.

Both come from Debian packages fetched with the host's apt (`apt-get download`, cached under
~/.cache/kiln/installer): linux-image-amd64's current kernel and busybox-static. The initramfs
holds busybox, the init script, its DHCP hook, kiln-disks (what the disk rule reads), the kernel
modules it needs (disks, NICs, ext4, RAID1, with their dependencies in load order), and the two tools a
mirrored root needs that busybox lacks, mdadm and sfdisk, with the shared libraries they load (from the
same release's packages). Outputs: images/installer/vmlinuz, initrd.img, manifest.json.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from kiln.build import cpio, manifest
from kiln.build.builder import BuildEnv, Outcome
from kiln.build.inputs import inputs_hash
from kiln.build.progress import Display
from kiln.fsutil import write_atomic
from kiln.run import CommandError, run

NAME = "installer"


def cache_dir() -> Path:
    """Where downloaded .debs are kept: $KILN_CACHE_DIR/installer, by default ~/.cache/kiln/installer."""
    return Path(os.environ.get("KILN_CACHE_DIR", Path.home() / ".cache" / "kiln")) / "installer"


KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"
# The installer's tools beyond busybox (a RAID1 root: elements/kiln-installer/static/init), as package -> path,
# and the packages their shared libraries come from (readelf's NEEDED, resolved in their files: one missing fails
# the build).
TOOLS = {"mdadm": "sbin/mdadm", "fdisk": "sbin/sfdisk"}
LIBRARIES = ("libc6", "libudev1", "libfdisk1", "libsmartcols1", "libblkid1", "libuuid1", "libreadline8", "libtinfo6")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
INTERPRETER = "lib64/ld-linux-x86-64.so.2"  # PT_INTERP of Debian's amd64 binaries
APT_TIMEOUT = 900.0


def kernel_package() -> str:
    """The kernel package linux-image-amd64 depends on in the host's apt lists (e.g. linux-image-6.1.0-56-amd64)."""
    out = run(["apt-cache", "depends", KERNEL_META]).stdout
    m = re.search(r"Depends:\s+(linux-image-\S+)", out)
    if m is None:
        raise CommandError(["apt-cache", "depends", KERNEL_META], 1, out or "no kernel package found")
    return m.group(1)


def candidate_version(package: str) -> str:
    out = run(["apt-cache", "policy", package]).stdout
    m = re.search(r"Candidate:\s+(\S+)", out)
    if m is None or m.group(1) == "(none)":
        raise CommandError(["apt-cache", "policy", package], 1, out or f"{package}: no candidate")
    return m.group(1)


def fetch(package: str, version: str, cache: Path) -> Path:
    """The .deb of package=version, downloaded into the cache once."""
    cache.mkdir(parents=True, exist_ok=True)
    quoted = version.replace(":", "%3a")
    for deb in cache.glob(f"{package}_*.deb"):
        if deb.name.startswith(f"{package}_{quoted}_") or deb.name.startswith(f"{package}_{version}_"):
            return deb
    run(["apt-get", "download", f"{package}={version}"], cwd=cache, timeout=APT_TIMEOUT)
    found = [d for d in cache.glob(f"{package}_*.deb") if quoted in d.name or version in d.name]
    if not found:
        raise CommandError(["apt-get", "download", f"{package}={version}"], 1, "no .deb appeared in the cache")
    return found[0]


def module_load_order(root: Path, kver: str, names: list[str]) -> list[str]:
    """The .ko files (relative to /lib/modules/KVER) that load `names`, dependencies first, each once."""
    run(["depmod", "-b", root, kver])
    order: list[str] = []
    moddir = root / "lib" / "modules" / kver
    for name in names:
        result = run(["modprobe", "-d", root, "-S", kver, "--show-depends", name], check=False)
        if result.returncode != 0:
            continue  # built into this kernel, or absent: nothing to load
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                rel = str(Path(parts[1]).resolve().relative_to(moddir.resolve()))
                if rel not in order:
                    order.append(rel)
    return order


def build(env: BuildEnv, display: Display, *, force: bool = False, cache: Path | None = None) -> Outcome:
    started = time.monotonic()
    out = env.images / NAME
    source = env.elements / "kiln-installer"
    try:
        kernel = kernel_package()
        versions = {p: candidate_version(p) for p in (kernel, BUSYBOX, *TOOLS, *LIBRARIES)}
        digest = inputs_hash(elements=[source], settings={"packages": versions}, files={}, dib_version="")
        if not force and manifest.up_to_date(out, digest):
            seconds = time.monotonic() - started
            display.set(NAME, "up to date", seconds=seconds)
            return Outcome(NAME, "up to date", seconds)
        display.set(NAME, "building", "fetch")
        debs = {pkg: fetch(pkg, version, cache or cache_dir()) for pkg, version in versions.items()}
        display.set(NAME, "building", "initramfs")
        with tempfile.TemporaryDirectory(prefix="kiln-img-installer-") as tmp:
            vmlinuz, initrd = _assemble(Path(tmp), source, debs[kernel], debs[BUSYBOX], [debs[p] for p in versions])
            out.mkdir(parents=True, exist_ok=True)
            (out / manifest.MANIFEST).unlink(missing_ok=True)
            write_atomic(out / "vmlinuz", vmlinuz)
            write_atomic(out / "initrd.img", initrd)
    except (CommandError, OSError) as e:
        seconds = time.monotonic() - started
        display.set(NAME, "failed", seconds=seconds)
        detail = f"{NAME}: build failed after {seconds:.0f}s: {e}"
        display.print(detail)
        return Outcome(NAME, "failed", seconds, detail)
    seconds = time.monotonic() - started
    manifest.write(
        out,
        {
            "role": NAME,
            "files": {n: manifest.file_entry(out / n) for n in ("vmlinuz", "initrd.img")},
            "inputs_hash": digest,
            "dib_version": None,
            "build_seconds": round(seconds, 1),
            "packages": versions,
            "elements": ["kiln-installer"],
            "cmdline": "kiln.image=URL kiln.map=URL kiln.sha256=HEX kiln.size=BYTES kiln.url=PROVISIONING_URL "
            "kiln.host=NAME kiln.token=TOKEN BOOTIF=01-aa-bb-cc-dd-ee-ff [kiln.disk=/dev/vda] "
            "console=tty0 console=ttyS0,115200n8",
        },
    )
    display.set(NAME, "built", "done", seconds=seconds)
    return Outcome(NAME, "built", seconds)


def _assemble(
    tmp: Path, source: Path, kernel_deb: Path, busybox_deb: Path, tool_debs: list[Path]
) -> tuple[bytes, bytes]:
    kroot, broot, troot = tmp / "kernel", tmp / "busybox", tmp / "tools"
    run(["dpkg-deb", "-x", kernel_deb, kroot])
    run(["dpkg-deb", "-x", busybox_deb, broot])
    for deb in tool_debs:
        if deb not in (kernel_deb, busybox_deb):
            run(["dpkg-deb", "-x", deb, troot])
    kver = next((kroot / "lib" / "modules").iterdir()).name
    vmlinuz = (kroot / "boot" / f"vmlinuz-{kver}").read_bytes()
    wanted = [line.split("#")[0].strip() for line in (source / "modules").read_text().splitlines()]
    order = module_load_order(kroot, kver, [w for w in wanted if w])
    busybox = next(p for p in (broot / "bin" / "busybox", broot / "usr" / "bin" / "busybox") if p.exists())

    entries = [
        cpio.directory(d)
        for d in ("bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "mnt", "run", "lib", "lib/modules")
    ]
    entries.append(cpio.char_device("dev/console", 5, 1))
    entries.append(cpio.file("bin/busybox", busybox.read_bytes(), 0o755))
    for applet in _applets(busybox):
        entries.append(cpio.symlink(f"bin/{applet}", "busybox"))
    static = source / "static"
    for path in sorted(static.rglob("*")):
        rel = path.relative_to(static).as_posix()
        if path.is_dir():
            if rel not in {e.path for e in entries}:
                entries.append(cpio.directory(rel))
        else:
            entries.append(cpio.file(rel, path.read_bytes(), 0o755 if path.stat().st_mode & 0o111 else 0o644))
    moddir = kroot / "lib" / "modules" / kver
    made: set[str] = set()
    for rel in order:
        parent = Path(rel).parent
        for d in reversed([parent, *parent.parents]):
            if str(d) != "." and str(d) not in made:
                made.add(str(d))
                entries.append(cpio.directory(f"lib/modules/{d}"))
        entries.append(cpio.file(f"lib/modules/{rel}", (moddir / rel).read_bytes()))
    entries.append(cpio.file("etc/kiln-modules", "".join(f"{r}\n" for r in order).encode()))
    entries += _tools(troot, {e.path for e in entries})
    return vmlinuz, cpio.initramfs(entries)


def needed(elf: Path) -> list[str]:
    """The sonames an ELF file loads (its DT_NEEDED entries, as readelf prints them)."""
    out = run(["readelf", "-d", "-W", elf]).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _tools(troot: Path, have: set[str]) -> list[cpio.Entry]:
    """TOOLS' binaries from `troot` (the extracted packages) and every library they load, transitively: each in
    /lib/x86_64-linux-gnu under its soname, the dynamic loader where the binaries ask for it. Raises CommandError
    when a library is in none of LIBRARIES' packages."""
    entries = [cpio.file(path, (troot / path).read_bytes(), 0o755) for path in TOOLS.values()]
    todo = [troot / path for path in TOOLS.values()]
    found: dict[str, Path] = {}
    while todo:
        for soname in needed(todo.pop()):
            if soname in found:
                continue
            where = next((troot / d / soname for d in LIB_DIRS if (troot / d / soname).exists()), None)
            if where is None:
                raise CommandError(["readelf", "-d"], 1, f"{soname} is in none of {', '.join(LIBRARIES)}")
            found[soname] = where.resolve()
            todo.append(found[soname])
    for d in ("lib/x86_64-linux-gnu", "lib64"):
        if d not in have:
            entries.append(cpio.directory(d))
    for soname, path in sorted(found.items()):
        entries.append(cpio.file(f"lib/x86_64-linux-gnu/{soname}", path.read_bytes(), 0o755))
    loader = Path(INTERPRETER).name
    if loader not in found:
        raise CommandError(["readelf", "-d"], 1, f"no {loader} among the tools' libraries")
    entries.append(cpio.symlink(INTERPRETER, f"/lib/x86_64-linux-gnu/{loader}"))
    return entries


def _applets(busybox: Path) -> list[str]:
    names = run([busybox, "--list"]).stdout.split()
    return sorted(n for n in names if n not in ("busybox",) and "/" not in n)
