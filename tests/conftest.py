"""Fixtures shared by every tier: the shipped roles.yaml, its cluster, generated secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.model import Cluster, load_roles
from kiln.secrets import SecretStore

PROJECT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def shipped_roles() -> Path:
    return PROJECT / "roles.yaml"


@pytest.fixture(scope="session")
def cluster(shipped_roles: Path) -> Cluster:
    return load_roles(shipped_roles)


@pytest.fixture(scope="session")
def secret_store(tmp_path_factory: pytest.TempPathFactory, cluster: Cluster) -> SecretStore:
    """A complete secrets/ for the reference cluster, made once per session in a temp dir."""
    store = SecretStore(tmp_path_factory.mktemp("secrets") / "secrets")
    store.ensure(cluster)
    return store


@pytest.fixture(scope="session")
def images() -> Path:
    """images/ with every role image and the PXE installer built (./inv build-all: a no-op taking seconds when they
    are up to date). A fixture, not a skip decided at collection: on a fresh clone, as in CI, nothing is built yet
    when the tests are collected."""
    from tests.e2e.image_helpers import build_all_images  # the image build's imports stay out of the quick tier's

    return build_all_images()
