"""Where the provisioning URL and this host's identity come from; each provider is small, first found wins.

kernel command line   kiln.url= kiln.host= kiln.token= BOOTIF=01-aa-...     (PXE)
seed file             /etc/kiln/seed.json {"url", "host", "mac", "token"}  (written by the PXE installer)
QEMU fw_cfg           opt/org.kiln/seed, the same JSON                     (VMs booted from a disk image)
EC2 IMDSv2 user-data  {"url", "host", "token"} or kiln.url=... lines     (AWS)
baked URL             /etc/kiln/agent.json {"url": ...}                     (image build time; no token)

The token is the host's one-time enrolment token (./inv reprovision mints it; GET /v1/hosts/NAME/seed shows
it to the operator): without one a host cannot enrol, so a baked URL alone provisions nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from firstboot.log import LOG
from firstboot.paths import Paths
from kiln.mac import normalize


@dataclass(frozen=True)
class Source:
    url: str
    origin: str
    host: str = ""
    mac: str = ""  # the boot interface's MAC when the source knows it (BOOTIF, installer seed)
    token: str = ""  # the enrolment token, when the source carries one


@dataclass(frozen=True)
class Settings:
    imds_endpoint: str = "http://169.254.169.254"
    imds_timeout: float = 0.2  # connect: a host that is not on EC2 moves on at once
    imds_read_timeout: float = 2.0  # an answer, once connected


Provider = Callable[[Paths, Settings], "Source | None"]


def providers() -> Sequence[tuple[str, Provider]]:
    from firstboot.sources import baked, cmdline, fwcfg, imds, seed

    return (
        ("kernel command line", cmdline.source),
        ("seed file", seed.source),
        ("QEMU fw_cfg", fwcfg.source),
        ("EC2 user-data", imds.source),
        ("baked URL", baked.source),
    )


class NoSource(Exception):
    pass


def discover(paths: Paths, settings: Settings) -> Source:
    tried = []
    for name, provider in providers():
        try:
            found = provider(paths, settings)
        except Exception as e:  # a broken source must not hide the ones after it
            LOG.warning("source %s unusable: %s", name, e)
            found = None
        if found is not None:
            LOG.info(
                "provisioning server %s from the %s%s",
                found.url,
                found.origin,
                f" (host {found.host})" if found.host else "",
            )
            return found
        tried.append(name)
    raise NoSource(f"no provisioning URL found (tried: {', '.join(tried)})")


def source_from_mapping(data: dict[str, object], origin: str) -> Source | None:
    url = data.get("url")
    if not isinstance(url, str) or not url:
        return None
    host, mac, token = data.get("host"), data.get("mac"), data.get("token")
    return Source(
        url=url.rstrip("/"),
        origin=origin,
        host=host if isinstance(host, str) else "",
        mac=normalize(mac) if isinstance(mac, str) and mac else "",
        token=token if isinstance(token, str) else "",
    )


def read_json_source(path: Path, origin: str) -> Source | None:
    """A JSON object file with at least "url"; None when the file does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return source_from_mapping(data, origin)


def parse_key_values(text: str) -> dict[str, str]:
    """kiln.url=... kiln.host=... BOOTIF=... tokens (kernel command line or user-data lines)."""
    found: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep:
            continue
        if key in ("kiln.url", "kiln.host", "kiln.token"):
            found[key.removeprefix("kiln.")] = value
        elif key == "BOOTIF":
            found["mac"] = value
    return found
