"""`kiln serve` as the lab runs it in its namespace: the real server, with the lab's SSH access in every bundle.

python -m kiln.lab.serve --public-key FILE --admin-address ADDR -- <kiln serve options>

Bundles are rendered from roles.yaml as usual; the server's bundle hook (`access.add_to_bundle`) adds
root's authorized key and the sshd drop-in before signing, so the agent applies and verifies them like every other file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kiln.bundle import Bundle
from kiln.lab import access
from kiln.project import Project
from kiln.server.cli import serve_command


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kiln.lab.serve")
    parser.add_argument("--public-key", required=True, type=Path)
    parser.add_argument("--admin-address", required=True)
    parser.add_argument("--roles")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--tls-listen", required=True)
    parser.add_argument("--database", required=True)
    args = parser.parse_args(argv)
    public_key = args.public_key.read_text().strip()

    def with_access(bundle: Bundle) -> Bundle:
        return access.add_to_bundle(bundle, public_key, args.admin_address)

    return serve_command(
        Project(roles=args.roles),
        listen=args.listen,
        tls_listen=args.tls_listen,
        database=args.database,
        bundle_hook=with_access,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
