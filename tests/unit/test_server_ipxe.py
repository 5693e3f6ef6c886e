"""iPXE scripts and the image catalog they are built from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.model import Cluster
from kiln.server.bootplan import Install, LocalDisk, Unknown
from kiln.server.ipxe import (
    ImageCatalog,
    Installer,
    InstallImage,
    NotBuilt,
    boot_script,
    script,
)

SHA = "ab" * 32
TOKEN = "Zm9vYmFyLXRva2VuLWZvci10aGUtaW5zdGFsbGVyLXRlc3Q"  # what secrets.token_urlsafe(32) looks like


def test_every_script_is_an_ipxe_script(cluster: Cluster) -> None:
    host = cluster.host("db2")
    installer = Installer("http://10.10.0.1:8080", cluster.provisioning_url)
    for text in (
        boot_script(installer.http_base),
        script(Install(host, InstallImage("db", SHA, 2 << 30), installer, TOKEN), installer.http_base),
        script(LocalDisk(host), installer.http_base),
        script(Unknown("52:54:00:00:00:01"), installer.http_base),
    ):
        assert text.startswith("#!ipxe\n") and text.endswith("\n")
    assert "chain --replace --autofree http://10.10.0.1:8080/ipxe?mac=${netX/mac}" in boot_script(installer.http_base)


def test_install_script_for_db2(cluster: Cluster) -> None:
    installer = Installer("http://10.10.0.1:8080", cluster.provisioning_url)
    text = script(Install(cluster.host("db2"), InstallImage("db", SHA, 2 << 30), installer, TOKEN), "http://x")
    assert text.splitlines()[2:] == [
        "kernel http://10.10.0.1:8080/images/installer/vmlinuz initrd=initrd.img"
        " kiln.image=http://10.10.0.1:8080/images/db/db.data kiln.map=http://10.10.0.1:8080/images/db/db.map"
        f" kiln.sha256={SHA} kiln.size=2147483648 kiln.url=https://10.10.0.1:8443 kiln.host=db2"
        f" kiln.token={TOKEN} BOOTIF=01-52-54-00-10-00-42 console=tty0 console=ttyS0,115200n8",
        "initrd http://10.10.0.1:8080/images/installer/initrd.img",
        "boot",
    ]


def test_unknown_machine_script_retries(cluster: Cluster) -> None:
    text = script(Unknown("52:54:00:00:00:01"), "http://10.10.0.1:8080")
    assert "52:54:00:00:00:01" in text and "not in roles.yaml" in text
    assert text.rstrip().splitlines()[-2:] == [
        "sleep 30",
        "chain --replace --autofree http://10.10.0.1:8080/ipxe?mac=${netX/mac}",
    ]


def _images(tmp_path: Path, manifest: object | None = None, raw: bool = True, map_file: bool = True) -> ImageCatalog:
    (tmp_path / "web").mkdir()
    if raw:
        (tmp_path / "web" / "web.raw").write_bytes(b"\0" * 512)
    if map_file:
        (tmp_path / "web" / "web.map").write_text("zero 0 1\n")
    if manifest is not None:
        (tmp_path / "web" / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return ImageCatalog(tmp_path)


def _manifest(sha: str = SHA, map_name: str = "web.map") -> dict[str, object]:
    return {"role": "web", "files": {}, "blockmap": {"file": map_name, "sha256": sha}}


def test_catalog_reads_the_block_map_digest_and_notices_a_rebuild(tmp_path: Path) -> None:
    catalog = _images(tmp_path, _manifest())
    assert catalog.install_image("web") == InstallImage("web", SHA, 512)
    (tmp_path / "web" / "manifest.json").write_text(json.dumps(_manifest("cd" * 32)) + " ")
    assert catalog.install_image("web").digest == "cd" * 32


@pytest.mark.parametrize(
    ("manifest", "raw", "map_file", "message"),
    [
        (_manifest(), False, True, "images/web/web.raw) is not built yet: run ./inv build --role web"),
        (None, True, True, "images/web/manifest.json is missing"),
        ("{", True, True, "has no block map (built by an older kiln): run ./inv build-all"),
        ({"files": {"web.raw": {"sha256": SHA}}}, True, True, "has no block map"),
        (_manifest("nothex; chain http://evil"), True, True, "malformed"),
        (_manifest(map_name="../db/db.map"), True, True, "malformed"),
        (_manifest(), True, False, "images/web/web.map is missing"),
    ],
)
def test_catalog_says_what_is_missing(
    tmp_path: Path, manifest: object, raw: bool, map_file: bool, message: str
) -> None:
    with pytest.raises(NotBuilt, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        _images(tmp_path, manifest, raw, map_file).install_image("web")


def test_catalog_requires_the_installer(tmp_path: Path) -> None:
    with pytest.raises(NotBuilt, match="images/installer/vmlinuz"):
        ImageCatalog(tmp_path).check_installer()
    (tmp_path / "installer").mkdir()
    (tmp_path / "installer" / "vmlinuz").write_bytes(b"k")
    with pytest.raises(NotBuilt, match="images/installer/initrd.img"):
        ImageCatalog(tmp_path).check_installer()
    (tmp_path / "installer" / "initrd.img").write_bytes(b"i")
    ImageCatalog(tmp_path).check_installer()


@pytest.mark.parametrize(
    ("header", "base"),
    [
        ("10.0.2.2:8080", "http://10.0.2.2:8080"),
        ("boot.example:80", "http://boot.example:80"),
        ("[fd00::1]:8080", "http://[fd00::1]:8080"),
        (None, "http://10.10.0.1:8080"),
        ("evil\nkernel http://x", "http://10.10.0.1:8080"),
        ("a b", "http://10.10.0.1:8080"),
        ("x/../y:1", "http://10.10.0.1:8080"),
    ],
)
def test_scripts_point_at_the_address_the_machine_used(header: str | None, base: str) -> None:
    assert Installer("http://10.10.0.1:8080", "https://10.10.0.1:8443").reached_as(header).http_base == base
