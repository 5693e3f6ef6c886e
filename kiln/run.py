"""The one subprocess wrapper: argument lists, never a shell string; failures say what failed and how."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

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
    stderr_apart: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` with stdout and stderr captured together (`stderr_apart`: stdout alone, for output that is parsed,
    stderr in .stderr and in the error); raise CommandError on a non-zero exit when `check`."""
    args = [os.fspath(a) for a in argv]
    try:
        result = subprocess.run(
            args,
            input=input,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr_apart else subprocess.STDOUT,
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
        raise CommandError(args, result.returncode, (result.stderr or "") + result.stdout)
    return result


@contextlib.contextmanager
def streaming(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: IO[bytes] | int | None = None,
    stdout: IO[bytes] | int | None = subprocess.PIPE,
    log: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` while the body reads its stdout (a byte pipe by default) or feeds its stdin (pass
    subprocess.PIPE): for commands whose output is data (a backup stream), not text. Its stderr goes to `log`
    (a binary file the caller reads afterwards) or a temp file. On leaving, the process is waited for and a
    non-zero exit raises CommandError with the tail of its stderr; when the body raises, the process is killed
    first and the body's error stands."""
    args = [os.fspath(a) for a in argv]
    with contextlib.ExitStack() as stack:
        errors = log if log is not None else stack.enter_context(tempfile.TemporaryFile())
        start = errors.tell()
        try:
            process = subprocess.Popen(
                args,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout,
                stderr=errors,
                env=dict(env) if env is not None else None,
            )
        except FileNotFoundError:
            raise CommandError(args, 127, f"{args[0]}: not found") from None
        try:
            yield process
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
        returncode = process.wait()
        if returncode != 0:
            errors.seek(start)
            raise CommandError(args, returncode, errors.read().decode(errors="replace"))
