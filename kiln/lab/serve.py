"""`kiln serve` as the lab runs it in its namespace: the real server, the lab's SSH key among the operators' keys.

python -m kiln.lab.serve --public-key FILE <kiln serve options>

Bundles are rendered from roles.yaml as usual, every generation from a model whose `access.ssh_keys` also holds
the lab's key (`access.with_lab_key`, the server's cluster hook), so the agent gives the admin account that key
like any operator's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kiln.lab import access
from kiln.model import Cluster
from kiln.project import Project
from kiln.server.cli import serve_command


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kiln.lab.serve")
    parser.add_argument("--public-key", required=True, type=Path)
    parser.add_argument("--roles")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--tls-listen", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--tftp-listen")
    parser.add_argument("--images")
    parser.add_argument("--secrets")
    args = parser.parse_args(argv)
    public_key = args.public_key.read_text().strip()

    def with_access(cluster: Cluster) -> Cluster:
        return access.with_lab_key(cluster, public_key)

    return serve_command(
        Project(roles=args.roles),
        listen=args.listen,
        tls_listen=args.tls_listen,
        database=args.database,
        cluster_hook=with_access,
        tftp_listen=args.tftp_listen,
        images=args.images,
        secrets=args.secrets,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
