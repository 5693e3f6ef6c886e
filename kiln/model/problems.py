"""A problem found in roles.yaml: where it is and what is wrong, printed as one line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    line: int
    path: str
    message: str
    expected: str = ""
    file: str = "roles.yaml"
    code: str = ""  # stable name of the check that found it (duplicate-mac, unknown-key, ...)

    def format(self) -> str:
        tail = f" ({self.expected})" if self.expected else ""
        return f"{self.file}:{self.line}: {self.path}: {self.message}{tail}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "message": self.message,
            "expected": self.expected,
            "code": self.code,
        }


class InvalidRoles(Exception):
    """roles.yaml cannot be used; `problems` lists every reason, sorted by line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(p.format() for p in self.problems))
