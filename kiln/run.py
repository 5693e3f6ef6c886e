"""The one subprocess wrapper: argument lists, never a shell string; failures say what failed and how."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

TAIL_LINES = 20


class CommandError(Exception):
    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])
        hint = " (command not found?)" if returncode == 127 else ""
        super().__init__(f"{shlex.join(self.argv)!r} exited {returncode}{hint}" + (f":\n{tail}" if tail else ""))


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` with stdout and stderr captured together; raise CommandError on a non-zero exit when `check`."""
    args = [os.fspath(a) for a in argv]
    try:
        result = subprocess.run(
            args,
            input=input,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise CommandError(args, 127, f"{args[0]}: not found") from None
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        raise CommandError(args, -9, f"timed out after {timeout}s\n{out}") from None
    if check and result.returncode != 0:
        raise CommandError(args, result.returncode, result.stdout)
    return result
