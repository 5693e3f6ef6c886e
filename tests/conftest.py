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
