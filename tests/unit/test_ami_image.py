"""Which file upload-ami publishes, and the sha256 it is tagged with (the build manifest's, proven while reading)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kiln.aws.image import ImageError, locate


def image_dir(tmp_path: Path, content: bytes, manifest: dict | None) -> Path:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "web.raw").write_bytes(content)
    if manifest is not None:
        (tmp_path / "web" / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_the_manifest_gives_the_sha256(tmp_path):
    images = image_dir(tmp_path, b"disk", {"role": "web", "files": {"web.raw": {"sha256": "AB" * 32, "size": 4}}})
    image = locate(images, "web")
    assert (image.sha256, image.size, image.from_manifest) == ("ab" * 32, 4, True)


def test_without_a_manifest_the_sha256_is_computed(tmp_path):
    image = locate(image_dir(tmp_path, b"disk", None), "web")
    assert image.sha256 == hashlib.sha256(b"disk").hexdigest() and not image.from_manifest


def test_a_size_other_than_the_manifests_is_refused(tmp_path):
    images = image_dir(tmp_path, b"disk!", {"files": {"web.raw": {"sha256": "ab" * 32, "size": 4}}})
    with pytest.raises(ImageError, match="5 bytes, but .* says 4: rebuild"):
        locate(images, "web")


def test_a_manifest_without_the_raw_file_is_refused(tmp_path):
    images = image_dir(tmp_path, b"disk", {"files": {"web.qcow2": {"sha256": "ab" * 32, "size": 4}}})
    with pytest.raises(ImageError, match=r"no files\.web\.raw\.sha256/size"):
        locate(images, "web")


def test_a_missing_image_says_how_to_build_it(tmp_path):
    with pytest.raises(ImageError, match=r"no such image \(build it with ./inv build --role db\)"):
        locate(tmp_path, "db")
