"""./inv upload-ami's messages when it cannot start: they say what is missing and how to get it, exit 1."""

from __future__ import annotations

import pytest

from kiln.aws.cli import upload_ami
from tests.moto_server import DUMMY_ENV
from tests.testdisk import write_test_disk


@pytest.fixture
def no_aws(monkeypatch):
    for k, v in DUMMY_ENV.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)


def test_no_region_says_how_to_give_one(tmp_path, capsys, no_aws):
    write_test_disk(tmp_path / "web" / "web.raw", blocks=4, data_at={0})
    assert upload_ami("web", images=tmp_path) == 1
    assert "no AWS region: pass --region or set AWS_REGION" in capsys.readouterr().err


def test_a_missing_image_says_how_to_build_it(tmp_path, capsys, no_aws):
    assert upload_ami("db", images=tmp_path, region="eu-west-1") == 1
    assert f"{tmp_path}/db/db.raw: no such image (build it with ./inv build --role db)" in capsys.readouterr().err


def test_an_unbootable_disk_is_refused_before_any_call(tmp_path, capsys, no_aws):
    write_test_disk(tmp_path / "app" / "app.raw", blocks=4, data_at={0}, boot_code=False)
    # an endpoint nothing listens on: reaching it would fail differently
    assert upload_ami("app", images=tmp_path, region="eu-west-1", endpoint_url="http://127.0.0.1:9") == 1
    assert "EC2 cannot boot it" in capsys.readouterr().err
