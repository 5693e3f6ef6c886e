"""An image bakes its cluster (the provisioning URL, the signing key, the cluster id): its manifest says which, and
serve, the lab and upload-ami refuse an image baked for another cluster, saying which and how to rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.aws.cli import upload_ami
from kiln.build import manifest
from kiln.build.builder import BuildEnv, _add_baked
from kiln.lab.layout import Lab
from kiln.lab.lifecycle import NotReady, check_images
from kiln.model import Cluster, load_roles
from kiln.project import Project
from kiln.secrets import SecretStore
from kiln.server.ipxe import ImageCatalog, NotBuilt

SHA = "ab" * 32


@pytest.fixture
def other(tmp_path: Path, shipped_roles: Path) -> tuple[Cluster, SecretStore, Path]:
    """Another cluster: the shipped one at another provisioning URL, with its own keys."""
    roles = tmp_path / "site.yaml"
    roles.write_text(shipped_roles.read_text().replace("https://10.10.0.1:8443", "https://10.10.0.1:9443"))
    cluster = load_roles(roles)
    store = SecretStore(tmp_path / "other-secrets")
    store.ensure(cluster)
    return cluster, store, roles


def _image(images: Path, role: str, baked: dict[str, str] | None) -> None:
    (images / role).mkdir(parents=True)
    for ext in ("raw", "qcow2"):
        (images / role / f"{role}.{ext}").write_bytes(b"\0" * 512)
    (images / role / f"{role}.map").write_text("zero 0 1\n")
    data = {
        "role": role,
        "files": {f"{role}.raw": {"sha256": "00" * 32, "size": 512}},
        "blockmap": {"file": f"{role}.map", "sha256": SHA},
    }
    if baked is not None:
        data[manifest.BAKED] = baked
    manifest.write(images / role, data)


def test_a_record_tells_its_cluster_apart_from_another(cluster, secret_store, other) -> None:
    ours = manifest.baked(cluster, secret_store, "roles.yaml")
    assert manifest.built_for_another({manifest.BAKED: ours}, ours) is None
    assert manifest.built_for_another({}, ours) is None, "an older kiln's image cannot tell: taken as it is"
    theirs = manifest.baked(other[0], other[1], "site.yaml")
    said = manifest.built_for_another({manifest.BAKED: theirs}, ours)
    assert said is not None and "https://10.10.0.1:9443 (from site.yaml)" in said
    assert "cluster id, provisioning url, signing key differ" in said
    shown_only = {**ours, "roles": "elsewhere.yaml"}  # the file it came from is shown, not compared
    assert manifest.built_for_another({manifest.BAKED: shown_only}, ours) is None


def test_serve_refuses_an_image_baked_for_another_cluster(tmp_path, cluster, secret_store, other) -> None:
    images = tmp_path / "images"
    _image(images, "web", manifest.baked(other[0], other[1], "site.yaml"))
    _image(images, "db", manifest.baked(cluster, secret_store, "roles.yaml"))
    catalog = ImageCatalog(images, manifest.baked(cluster, secret_store, "roles.yaml"))
    with pytest.raises(NotBuilt, match=r"the web image cannot join this cluster .* --roles roles\.yaml"):
        catalog.install_image("web")
    assert catalog.install_image("db").digest == SHA


def test_lab_up_refuses_an_image_baked_for_another_cluster(tmp_path, cluster, secret_store, other) -> None:
    images = tmp_path / "images"
    for role in sorted({h.role for h in Lab(cluster).hosts}):  # every role the lab boots
        baked = other if role == "app" else (cluster, secret_store, "roles.yaml")
        _image(images, role, manifest.baked(baked[0], baked[1], str(baked[2])))
    lab = Lab(cluster, images=images, secrets=secret_store.root)
    with pytest.raises(NotReady, match=r"the app image cannot join this cluster .*: run ./inv build-all --roles"):
        check_images(lab, "disk")
    rebuilt = manifest.read(images / "app") or {}
    manifest.write(images / "app", {**rebuilt, manifest.BAKED: manifest.baked(cluster, secret_store, "roles.yaml")})
    check_images(lab, "disk")


def test_upload_ami_refuses_an_image_baked_for_another_cluster(tmp_path, other, capsys) -> None:
    images = tmp_path / "images"
    _image(images, "web", manifest.baked(other[0], other[1], "site.yaml"))
    project = Project(roles=Path(__file__).resolve().parents[2] / "roles.yaml", root=tmp_path)
    (tmp_path / "secrets").mkdir()
    SecretStore(tmp_path / "secrets").ensure(project.cluster())
    assert upload_ami("web", region="eu-west-1", images=images, project=project) == 1
    said = capsys.readouterr().err
    assert "the web image cannot join" in said and "./inv build --role web --roles" in said, said


def test_an_up_to_date_image_gets_its_record_without_a_rebuild(tmp_path, cluster, secret_store) -> None:
    images = tmp_path / "images"
    _image(images, "web", None)
    env = BuildEnv(cluster=cluster, mirror=None, store=secret_store, images=images, roles="site.yaml")  # type: ignore[arg-type]
    _add_baked(env, images / "web")
    record = json.loads((images / "web" / "manifest.json").read_text())[manifest.BAKED]
    assert record == manifest.baked(cluster, secret_store, "site.yaml")
