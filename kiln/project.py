"""The project layer: where kiln's files are and which cluster file a command works on, for every task.

Project()                      the checkout this module is in, its roles.yaml (or $KILN_ROLES)
Project(roles="site.yaml")     another cluster file (--roles)
project.cluster()              the parsed cluster, loaded once; InvalidRoles lists every problem
project.load_or_report()       the cluster, or None after printing every problem to stderr
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kiln.model import Cluster, InvalidRoles, load_roles

ROOT = Path(__file__).resolve().parent.parent
ROLES_ENV = "KILN_ROLES"  # the cluster file when --roles is not given
DEFAULT_DATABASE = "sqlite:///state/kiln.db"  # relative to the project root


@dataclass(frozen=True)
class Project:
    roles: str | os.PathLike[str] | None = None  # --roles; None: $KILN_ROLES, then roles.yaml in the project
    root: Path = ROOT
    _loaded: dict[str, Cluster] = field(default_factory=dict, compare=False, repr=False)

    @property
    def roles_path(self) -> Path:
        chosen = self.roles or os.environ.get(ROLES_ENV) or self.root / "roles.yaml"
        return Path(chosen)

    @property
    def roles_shown(self) -> str:
        """The cluster file as the operator would type it (relative to here when inside the current directory)."""
        path = self.roles_path
        try:
            return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)
        except OSError:
            return str(path)

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def elements(self) -> Path:
        return self.root / "elements"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def cluster(self) -> Cluster:
        """The cluster file, parsed and validated once per Project; InvalidRoles lists every problem."""
        if "cluster" not in self._loaded:
            self._loaded["cluster"] = load_roles(self.roles_path)
        return self._loaded["cluster"]

    def load_or_report(self) -> Cluster | None:
        """The cluster, or None after printing each problem as one line on stderr."""
        try:
            return self.cluster()
        except InvalidRoles as e:
            for problem in e.problems:
                print(problem.format(), file=sys.stderr)
            return None
