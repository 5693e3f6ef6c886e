"""`mirror: auto`: the Debian archive and security URLs come from the build host's apt sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.build.mirror import MirrorNotFound, parse_deb822, parse_one_line, resolve

DEB822 = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example.org/debian
Suites: bookworm
"""


def _apt_root(tmp_path: Path, sources_list: str = "", parts: dict[str, str] | None = None) -> Path:
    (tmp_path / "sources.list.d").mkdir(parents=True)
    (tmp_path / "sources.list").write_text(sources_list)
    for name, text in (parts or {}).items():
        (tmp_path / "sources.list.d" / name).write_text(text)
    return tmp_path


def test_deb822_sources_give_archive_and_security(tmp_path: Path) -> None:
    root = _apt_root(tmp_path, parts={"debian.sources": DEB822})
    mirror = resolve("auto", "bookworm", root)
    assert mirror.archive == "http://mirror.example.org/debian"
    assert mirror.security == "http://mirror.example.org/debian-security"


def test_disabled_stanza_is_skipped() -> None:
    uris = [s.uri for s in parse_deb822(DEB822)]
    assert "http://disabled.example.org/debian" not in uris


def test_one_line_sources_list_with_options(tmp_path: Path) -> None:
    text = (
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://one.example.net/debian/ bookworm main contrib\n"
        "deb-src https://one.example.net/debian bookworm main\n"
    )
    root = _apt_root(tmp_path, sources_list=text)
    mirror = resolve("auto", "bookworm", root)
    assert mirror.archive == "https://one.example.net/debian"
    # no security source listed: <mirror-host>/debian-security
    assert mirror.security == "https://one.example.net/debian-security"


def test_cdrom_and_file_sources_are_not_mirrors(tmp_path: Path) -> None:
    text = "deb cdrom:[Debian 12]/ bookworm main\ndeb file:/srv/repo bookworm main\n"
    root = _apt_root(tmp_path, sources_list=text)
    with pytest.raises(MirrorNotFound, match="image.mirror"):
        resolve("auto", "bookworm", root)


def test_other_release_is_not_taken(tmp_path: Path) -> None:
    root = _apt_root(tmp_path, sources_list="deb http://old.example.org/debian bullseye main\n")
    with pytest.raises(MirrorNotFound, match="bookworm"):
        resolve("auto", "bookworm", root)


def test_explicit_mirror_wins_over_host_sources(tmp_path: Path) -> None:
    root = _apt_root(tmp_path, parts={"debian.sources": DEB822})
    mirror = resolve("https://explicit.example.com/debian/", "bookworm", root)
    assert mirror.archive == "https://explicit.example.com/debian"
    assert mirror.security == "https://explicit.example.com/debian-security"


def test_one_line_parser_ignores_deb_src() -> None:
    assert parse_one_line("deb-src http://x.example/debian bookworm main\n") == []
