"""Freeze the first-boot agent with PyInstaller (onedir) into images/firstboot/, only when its sources changed.

onedir, not onefile: a onefile binary unpacks itself to a temp dir on every start (about twice as slow).
The result runs on Debian 12 with no Python installed: the interpreter and libraries travel in _internal/.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kiln.project import ROOT as PROJECT
from kiln.run import CommandError, run

OUT = PROJECT / "images" / "firstboot"
STAMP = ".kiln-freeze-stamp"
# the agent's own code and the few kiln modules it imports (pure: cryptography and the standard library)
SOURCES = (
    "firstboot",
    "kiln/__init__.py",
    "kiln/bundle.py",
    "kiln/typedjson.py",
    "kiln/signing.py",
    "kiln/run.py",
    "kiln/fsutil.py",
    "kiln/mac.py",
    "kiln/hostauth.py",
    "kiln/db/__init__.py",  # the package of gtid.py, which the db guard shares with the failover monitor
    "kiln/db/gtid.py",
)
# the agent's systemd units, shipped beside it in firstboot/ (frozen with it as data, baked by kiln-firstboot):
# the first boot, then converge, which the path unit starts once the first boot wrote /var/lib/firstboot/done
UNITS = ("firstboot.service", "kiln-converge.service", "kiln-converge.path")
ENTRY = "import sys\nfrom firstboot.cli import main\nsys.exit(main())\n"
EXCLUDES = (
    "tkinter",
    "jinja2",
    "yaml",
    "jsonschema",
    "rich",
    "invoke",
    "pytest",
    "setuptools",
    "pip",
    "kiln.model",
    "kiln.render",
    "kiln.server",
    "kiln.build",
    "kiln.aws",
    "boto3",
    "sqlalchemy",
    "starlette",
)


def source_files() -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = PROJECT / name
        files += (
            sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if path.is_dir()
            else [path]
        )
    return files


def inputs_hash() -> str:
    """Sources, the PyInstaller, PyMySQL (the db guard's) and Python versions: a change to any means a rebuild."""
    import PyInstaller
    import pymysql

    h = hashlib.sha256()
    h.update(f"pyinstaller {PyInstaller.__version__} pymysql {pymysql.__version__} python {sys.version}\n".encode())
    for path in source_files():
        h.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def up_to_date(out: Path = OUT) -> bool:
    try:
        return (out / STAMP).read_text().strip() == inputs_hash() and (out / "firstboot").is_file()
    except FileNotFoundError:
        return False


def freeze(out: Path = OUT, *, force: bool = False) -> int:
    if not force and up_to_date(out):
        shown = out.relative_to(PROJECT) if out.is_relative_to(PROJECT) else out
        print(f"{shown}/firstboot is up to date (sources unchanged)")
        return 0
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".freeze-", dir=out.parent) as tmp:
        work = Path(tmp)
        (work / "firstboot_main.py").write_text(ENTRY)
        args: list[str | Path] = [
            sys.executable,
            "-m",
            "PyInstaller",
            "--onedir",
            "--name",
            "firstboot",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            work / "dist",
            "--workpath",
            work / "build",
            "--specpath",
            work,
            "--paths",
            PROJECT,
            *[a for unit in UNITS for a in ("--add-data", f"{PROJECT / 'firstboot' / unit}:firstboot")],
            *[a for m in EXCLUDES for a in ("--exclude-module", m)],
            work / "firstboot_main.py",
        ]
        try:
            run(args, cwd=work, timeout=900)
        except CommandError as e:
            print(f"freezing the agent failed: {e}", file=sys.stderr)
            return 1
        built = work / "dist" / "firstboot"
        check = subprocess.run(
            [built / "firstboot", "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        if check.returncode != 0:
            print(f"the frozen agent does not start: {check.stdout}{check.stderr}", file=sys.stderr)
            return 1
        (built / STAMP).write_text(inputs_hash() + "\n")
        old = work / "old"
        if out.exists():
            out.rename(old)
        built.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"froze {check.stdout.strip()} into {out}/ ({size / 1e6:.1f} MB) in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(freeze(force="--force" in sys.argv))
