"""The Debian mirror the build host's apt uses (`mirror: auto`), read from its apt sources.

Both formats are read: deb822 `/etc/apt/sources.list.d/*.sources` and one-line
`/etc/apt/sources.list` (+ `sources.list.d/*.list`). The archive is the first `deb` source
serving the release (or its -updates suite); the security suite is the source serving
`<release>-security` when there is one, otherwise `<archive host>/debian-security`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

APT_ROOT = Path("/etc/apt")


class MirrorNotFound(Exception):
    pass


@dataclass(frozen=True)
class Mirror:
    archive: str  # e.g. http://HOST/debian
    security: str  # e.g. http://HOST/debian-security


@dataclass(frozen=True)
class Source:
    uri: str
    suites: tuple[str, ...]


def parse_deb822(text: str) -> list[Source]:
    """The `deb` sources of a deb822 .sources file (disabled stanzas, `Enabled: no`, skipped)."""
    sources: list[Source] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        sources += [Source(uri, suites) for uri in fields.get("uris", "").split()]
    return sources


def parse_one_line(text: str) -> list[Source]:
    """The `deb` lines of a one-line-style sources.list, options in [brackets] ignored."""
    sources: list[Source] = []
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            sources.append(Source(words[1], (words[2],)))
    return sources


def host_sources(apt_root: Path = APT_ROOT) -> list[Source]:
    sources: list[Source] = []
    if (apt_root / "sources.list").is_file():
        sources += parse_one_line((apt_root / "sources.list").read_text())
    parts = apt_root / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".sources":
                sources += parse_deb822(path.read_text())
            elif path.suffix == ".list":
                sources += parse_one_line(path.read_text())
    return sources


def _http(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def choose(sources: list[Source], release: str) -> Mirror:
    """The archive and security URLs for `release` among the host's sources."""
    archive = next(
        (s.uri for s in sources if _http(s.uri) and any(x in (release, f"{release}-updates") for x in s.suites)), None
    )
    if archive is None:
        raise MirrorNotFound(
            f"no http(s) deb source for {release} in the host's apt sources; "
            "set image.mirror in roles.yaml to a Debian mirror URL"
        )
    security = next((s.uri for s in sources if _http(s.uri) and f"{release}-security" in s.suites), None)
    return Mirror(archive.rstrip("/"), (security or security_of(archive)).rstrip("/"))


def security_of(archive: str) -> str:
    """`<mirror-host>/debian-security` for an archive URL."""
    parts = urlsplit(archive)
    return urlunsplit((parts.scheme, parts.netloc, "/debian-security", "", ""))


def resolve(setting: str, release: str, apt_root: Path = APT_ROOT) -> Mirror:
    """roles.yaml image.mirror: `auto` reads the host's apt sources; a URL is the archive itself."""
    if setting == "auto":
        return choose(host_sources(apt_root), release)
    return Mirror(setting.rstrip("/"), security_of(setting))
