"""`kiln serve` as the lab runs it in its namespace: the real server, with the lab's SSH access in every bundle.

python -m kiln.lab.serve --public-key FILE --admin-address ADDR -- <kiln serve options>

Bundles are rendered from roles.yaml as usual; `access.add_to_bundle` adds root's authorized key and
the sshd drop-in before signing, so the agent applies and verifies them like every other file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kiln.lab import access
from kiln.model import Host
from kiln.server import main as server_main
from kiln.server.bundles import BundleCache
from kiln.server.cli import serve_command


def lab_bundles(public_key: str, admin_address: str) -> type[BundleCache]:
    class LabBundles(BundleCache):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._with_access: dict[str, dict[str, Any]] = {}

        def rendered(self, host: Host) -> dict[str, Any]:
            bundle = self._with_access.get(host.name)
            if bundle is None:
                bundle = access.add_to_bundle(super().rendered(host), public_key, admin_address)
                bundle = self._with_access.setdefault(host.name, bundle)
            return bundle

    return LabBundles


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kiln.lab.serve")
    parser.add_argument("--public-key", required=True, type=Path)
    parser.add_argument("--admin-address", required=True)
    parser.add_argument("--roles")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--tls-listen", required=True)
    parser.add_argument("--database", required=True)
    args = parser.parse_args(argv)
    server_main.BundleCache = lab_bundles(args.public_key.read_text().strip(), args.admin_address)  # type: ignore[misc]
    return serve_command(args.roles, args.listen, args.tls_listen, args.database, None, None, False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
