"""`./inv doctor` finds what would stop machines from joining, one line per problem with the command that fixes it,
and says so when there is nothing: from an empty checkout to a ready one, step by step."""

from __future__ import annotations

import socket
from pathlib import Path

from kiln import doctor
from kiln.build import manifest
from kiln.model import load_roles
from kiln.project import Project
from kiln.secrets import SecretStore


def _lines(found: list[doctor.Problem]) -> list[str]:
    return [str(p) for p in found if not p.what.startswith("packages")]  # this machine's packages: their own test


def _image(images: Path, role: str, baked: dict[str, str]) -> None:
    (images / role).mkdir(parents=True, exist_ok=True)
    (images / role / f"{role}.raw").write_bytes(b"\0" * 512)
    manifest.write(images / role, {"role": role, "files": {}, manifest.BAKED: baked})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_walks_an_operator_from_nothing_to_ready(tmp_path: Path, shipped_roles: Path, capsys) -> None:
    project = Project(roles=shipped_roles)
    cluster = load_roles(shipped_roles)
    images, secrets = tmp_path / "images", tmp_path / "secrets"
    ports = (_free_port(),)

    def examine() -> list[str]:
        return _lines(doctor.examine(project, cluster, images=images, secrets=secrets, ports=ports))

    [line] = examine()
    assert line.startswith(f"secrets: {secrets} lacks signing.key") and "run ./inv keys --roles" in line
    store = SecretStore(secrets)
    store.ensure(cluster)

    not_built = examine()
    assert [line.split(" (")[0] for line in not_built] == [
        "images: the app image is not built",
        "images: the db image is not built",
        "images: the lb image is not built",
        "images: the mon image is not built",
        "images: the web image is not built",
        "images: the PXE installer lacks vmlinuz: run ./inv build-all --roles " + project.roles_shown,
    ]
    ours = manifest.baked(cluster, store, project.roles_shown)
    for role in ("app", "db", "lb", "mon", "web"):
        _image(images, role, ours)
    (images / "installer").mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (images / "installer" / name).write_bytes(b"x")
    assert examine() == []
    code = doctor.doctor(project, images=images, secrets=secrets, ports=ports)
    printed = capsys.readouterr().out.splitlines()
    if code == 0:
        assert printed == [f"{project.roles_shown}: cluster foobar, 8 hosts: no problem found"]
    else:  # only what this machine lacks is left
        assert code == 1 and printed and all(line.startswith("packages: ") for line in printed), printed

    _image(images, "web", {**ours, "provisioning_url": "https://10.9.9.9:8443"})
    [line] = examine()
    assert line.startswith("images: the web image cannot join this cluster") and "provisioning url differ" in line
    _image(images, "web", ours)

    (secrets / "site.key").unlink()
    [line] = examine()
    assert "lacks site.key" in line and "./inv keys" in line
    store.ensure(cluster)
    assert examine() == []
    # an operator's own site certificate that names another host (here: the server's, with its key)
    (secrets / "site.pem").write_bytes((secrets / "server.pem").read_bytes())
    (secrets / "site.key").write_bytes((secrets / "server.key").read_bytes())
    [line] = examine()
    assert line.startswith("secrets: site certificate") and "does not cover www.foobar.com, 10.10.0.100" in line


def test_doctor_says_which_listener_port_is_taken(tmp_path: Path, shipped_roles: Path) -> None:
    cluster = load_roles(shipped_roles)
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        found = doctor.examine(Project(roles=shipped_roles), cluster, images=tmp_path, secrets=tmp_path, ports=(port,))
    [line] = [str(p) for p in found if p.what.startswith("listeners")]
    assert f"TCP port {port} is taken" in line and "--listen/--tls-listen" in line
