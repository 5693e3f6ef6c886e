"""`./inv`: Invoke's Program with kiln's help, usage errors, version and Debian packages.

- `./inv TASK --help`, `./inv TASK -h` (when no flag of TASK is -h) and `./inv --help TASK` print TASK's usage,
  positionals included, and run nothing: no task, no package install.
- A usage error (an unknown task or flag, a missing positional, a flag without its value) exits 2 with one line
  saying what was wrong and, for a misspelled task or flag, the closest one.
- `./inv --version` prints kiln's version.
- The Debian packages the tasks need (kiln.hostdeps) are installed after the command line parsed, just before the
  tasks run.

The launcher runs `python -m kiln.program --search-root REPO ARGS...`.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from collections.abc import Iterable
from importlib.metadata import version

from invoke import Exit, ParseError, Program
from invoke.parser import Argument, Parser, ParserContext, ParseResult

from kiln import hostdeps

BINARY = "./inv"
USAGE_ERROR = 2  # what argparse and most Unix tools exit with for a command line they cannot take

# Invoke's ParseError carries a message and the context it happened in, not the token it could not place.
_UNKNOWN = re.compile(r"No idea what (.+) is!$")
_NO_VALUE = re.compile(r"^Flag <Argument: ([\w-]+)")


class KilnProgram(Program):
    """Invoke's Program for tasks.py; `run()` (Invoke's) is the command, `parse()` what it runs."""

    def __init__(self) -> None:
        super().__init__(name="kiln", binary=BINARY, binary_names=["inv"], version=version("kiln"))

    def parse(self, argv: list[str]) -> list[str]:
        """Parse ARGV (the program's name first) as `run` does before it runs anything; the names of the tasks it
        would run, in order. Raises Exit: code 0 once help, the task list or the version is printed; code 2 with
        the message for a usage error."""
        self.create_config()
        self.parse_core(argv)
        self.parse_collection()
        self.parse_tasks()
        self.parse_cleanup()
        return _names(self.tasks)

    def parse_core(self, argv: list[str] | None) -> None:
        try:
            super().parse_core(argv)
        except ParseError as e:
            raise self._usage_error(e.context, str(e)) from None

    def _make_parser(self) -> Parser:
        # Each task gets its own --help (and -h unless a flag of the task has it): the parser looks at a task's
        # flags before it fills a missing positional, which Invoke's core --help comes after (`./inv render --help`
        # rendered into a directory named --help).
        contexts = self.collection.to_contexts(ignore_unknown_help=self.config.tasks.ignore_unknown_help)
        for context in contexts:
            names = ("help",) if "-h" in context.flags else ("help", "h")
            context.add_arg(Argument(names=names, kind=bool, default=False, help="print this usage and exit"))
        return Parser(initial=self.initial_context, contexts=contexts)

    def parse_tasks(self) -> None:
        try:
            super().parse_tasks()
        except ParseError as e:
            # `./inv reprovision --help`: HOST is missing, which fails the parse, but help was asked for first
            asked = _help_asked(e.context) if e.context is not None else None
            if asked:
                self._help_for(asked)
                return
            raise self._usage_error(e.context, str(e)) from None
        helped = [name for name in map(_help_asked, self.tasks) if name]
        if helped:
            self._help_for(helped[0])
            return
        for context in self.tasks:
            if _flag_taken_as_positional(context):
                raise self._usage_error(context)
        # the tasks run without the help flag (they do not take it)
        self.tasks[:] = [_without(context, "help") for context in self.tasks]

    def parse_cleanup(self) -> None:
        try:
            super().parse_cleanup()
        except ParseError as e:  # `./inv --help rendr`
            raise self._usage_error(e.context, str(e)) from None

    def execute(self) -> None:
        code = hostdeps.ensure(_names(self.tasks))
        if code:
            raise Exit(code=code)
        super().execute()

    def print_help(self) -> None:
        super().print_help()
        print(f"Tasks: {self.binary} --list; a task's usage: {self.binary} TASK --help")

    def print_task_help(self, name: str) -> None:
        context = self.parser.contexts[name]
        print(f"Usage: {self.binary} {name} {_usage(context)}")
        print()
        for line in (inspect.getdoc(self.collection[name]) or "").splitlines():
            print(self.leading_indent + line if line.strip() else "")
        print()
        print("Options:")
        self.print_columns(context.help_tuples())

    def _help_for(self, name: str) -> None:
        """Make parse_cleanup print NAME's usage and stop, as for `./inv --help NAME`."""
        self.args.help.value = name
        self.tasks = ParseResult()

    def _usage_error(self, context: ParserContext | None, invoke_said: str = "") -> Exit:
        """The one line for what Invoke could not parse (in CONTEXT, a task's or the core's), with the closest task
        or flag when one is close."""
        context = context if context is not None and context.name else None
        where = f"{self.binary} {context.name}" if context else self.binary
        unknown = _UNKNOWN.search(invoke_said)
        # a flag the task lacks, taken as its missing positional (`./inv reprovision --rolse db2`), is what is wrong
        token = _flag_taken_as_positional(context) if context else None
        if token is None and unknown:
            token = ast.literal_eval(unknown[1])
        flags_shown = f"({where} --help shows the flags)"
        if token is not None and token.startswith("-"):
            flags = context.flags if context else self.initial_context.flags
            known = [*flags.keys(), *(context.inverse_flags if context else ())]
            return _exit(f"{where}: no flag {token}{_closest(token, known)} {flags_shown}")
        if token is not None:
            names = self.collection.task_names.keys()
            return _exit(f"{self.binary}: no task named {token!r}{_closest(token, names)} ({BINARY} --list shows them)")
        no_value = _NO_VALUE.search(invoke_said)
        if no_value:
            return _exit(f"{where}: --{no_value[1]} needs a value {flags_shown}")
        if context and context.missing_positional_args:
            missing = " ".join(_metavar(arg) for arg in context.missing_positional_args)
            return _exit(f"{where}: {missing} is missing (usage: {where} {_usage(context)})")
        return _exit(f"{where}: {invoke_said}")


def _exit(message: str) -> Exit:
    return Exit(message, code=USAGE_ERROR)


def _closest(token: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(token, list(candidates), n=1)
    return f"; did you mean {match[0]}?" if match else ""


def _names(tasks: Iterable[ParserContext]) -> list[str]:
    return [task.name for task in tasks if task.name]  # only the core context has no name


def _help_asked(context: ParserContext) -> str | None:
    """The task's name when its --help was given."""
    asked = "help" in context.args and context.args["help"].value is True
    return context.name if asked and context.name else None


def _flag_taken_as_positional(context: ParserContext) -> str | None:
    """A value of a positional that is a flag: Invoke fills a missing positional with whatever comes next, a flag
    the task lacks included; no positional of a kiln task starts with '-'."""
    for arg in context.positional_args:
        if isinstance(arg.value, str) and arg.value.startswith("-"):
            return arg.value
    return None


def _metavar(arg: Argument) -> str:
    return arg.names[0].upper().replace("-", "_")


def _usage(context: ParserContext) -> str:
    return " ".join(["[--options]", *(_metavar(arg) for arg in context.positional_args)])


def _without(context: ParserContext, name: str) -> ParserContext:
    """A copy of CONTEXT without the argument NAME; the other arguments keep their parsed values."""
    args = [arg for arg in context.args.values() if arg.name != name]
    return ParserContext(name=context.name, aliases=context.aliases, args=args)


def main() -> None:
    KilnProgram().run()


if __name__ == "__main__":
    main()
