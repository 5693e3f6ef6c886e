"""Every bundle `./inv render` writes applies with `firstboot apply --root`; a second apply changes nothing."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.bundle import Bundle
from kiln.secrets import SecretStore
from tests.integration.agent_netns import host_tree

pytestmark = pytest.mark.integration
PROJECT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kiln-agt-render")
    inv = [sys.executable, "-m", "invoke", "--search-root", str(PROJECT)]
    result = subprocess.run([*inv, "render", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def apply(bundle: Path, root: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "firstboot", "apply", "--bundle", str(bundle), "--root", str(root), "--no-services"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_every_rendered_bundle_applies_and_reapplies_unchanged(
    rendered: Path, tmp_path: Path, secret_store: SecretStore
) -> None:
    bundles = sorted(rendered.glob("*/bundle.json"))
    assert len(bundles) == 8
    (tmp_path / "_shared").symlink_to(rendered / "_shared")
    for path in bundles:
        host = path.parent.name
        # as rendered (secrets by reference), then as served (secret values filled in)
        root = host_tree(tmp_path / host)
        first = apply(path, root)
        assert first.returncode == 0, f"{host}: {first.stdout}{first.stderr}"
        rendered_bundle = Bundle.from_json(path.read_bytes())
        served = rendered_bundle.with_secret_values(secret_store.values_for(rendered_bundle))
        served_path = tmp_path / f"{host}.served.json"  # beside _shared/, where apply finds the shared contents
        served_path.write_bytes(served.to_json())
        assert apply(served_path, root).returncode == 0
        again = apply(served_path, root)
        assert again.returncode == 0 and again.stdout.rstrip().endswith(": unchanged"), f"{host}: {again.stdout}"
        for f in served.files:  # byte for byte what ./inv render previews
            target = root / f.path.lstrip("/")
            assert target.read_bytes() == (path.parent / "root" / f.path.lstrip("/")).read_bytes()
            assert stat.S_IMODE(target.stat().st_mode) == int(f.mode, 8)
        for s in served.secrets:
            assert s.value is not None
            target = root / s.path.lstrip("/")
            assert target.read_text() == s.value and stat.S_IMODE(target.stat().st_mode) == int(s.mode, 8)
            assert s.value not in first.stdout + first.stderr + again.stdout + again.stderr


def test_owners_resolve_by_name_in_the_tree(rendered: Path, tmp_path: Path) -> None:
    import grp
    import pwd

    root = host_tree(tmp_path / "web1")
    assert apply(rendered / "web1" / "bundle.json", root).returncode == 0
    cache = (root / "var/cache/nginx/kiln").stat()
    assert (cache.st_uid, cache.st_gid) == (pwd.getpwnam("www-data").pw_uid, grp.getgrnam("www-data").gr_gid)
    lb = host_tree(tmp_path / "lb1")
    assert apply(rendered / "lb1" / "bundle.json", lb).returncode == 0
    assert (lb / "etc/haproxy/haproxy.cfg").stat().st_gid == grp.getgrnam("haproxy").gr_gid
