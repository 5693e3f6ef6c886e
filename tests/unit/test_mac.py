"""One MAC rule for roles.yaml, the server's query parameters and the agent's BOOTIF and NICs."""

from __future__ import annotations

import pytest

from kiln import mac
from kiln.model import InvalidRoles, parse_roles
from kiln.server.inputs import BadInput, parse_mac


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("52:54:00:10:00:11", "52:54:00:10:00:11"),
        ("52-54-00-10-00-AB", "52:54:00:10:00:ab"),
        (" 52:54:00:10:00:AB\n", "52:54:00:10:00:ab"),
        ("01-52-54-00-10-00-ab", "52:54:00:10:00:ab"),  # BOOTIF as pxelinux and iPXE pass it
    ],
)
def test_every_spelling_of_one_mac_is_one_mac(text: str, expected: str) -> None:
    assert mac.normalize(text) == expected
    assert parse_mac(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "52:54:00:10:00",
        "52:54:00:10:00:11:22",
        "52:54-00:10:00:11",
        "zz:54:00:10:00:11",
        "5254.0010.0011",
        "52:54:00:10:00:1",
        "02-52-54-00-00-00-0b-ff",
    ],
)
def test_what_is_not_a_mac_is_refused_everywhere(text: str) -> None:
    with pytest.raises(ValueError):
        mac.normalize(text)
    with pytest.raises(BadInput):
        parse_mac(text)


def test_roles_yaml_compares_macs_by_the_same_rule(shipped_roles) -> None:
    text = shipped_roles.read_text()
    same_as_lb1 = text.replace('mac: "52:54:00:10:00:12"', 'mac: "52-54-00-10-00-11"')  # lb2 spelled another way
    with pytest.raises(InvalidRoles) as raised:
        parse_roles(same_as_lb1)
    assert [p.path for p in raised.value.problems if p.code == "duplicate-mac"] == ["$.hosts[1].mac"]
    assert parse_roles(text.replace("52:54:00:10:00:41", "52:54:00:10:00:4F")).host("db1").mac == "52:54:00:10:00:4f"
