from __future__ import annotations

import pytest

from meshnet.config import CONTROL_PORT
from meshnet.discovery import parse_addr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.0.0.1", ("10.0.0.1", CONTROL_PORT)),
        ("10.0.0.1:7000", ("10.0.0.1", 7000)),
        ("  host.example:1 \n", ("host.example", 1)),
        ("host.example", ("host.example", CONTROL_PORT)),
        ("[fd00::1]:7946", ("fd00::1", 7946)),
        ("[fd00::1]", ("fd00::1", CONTROL_PORT)),
        ("fd00::1", ("fd00::1", CONTROL_PORT)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ],
)
def test_parse_addr(text, expected):
    assert parse_addr(text) == expected


def test_default_port_is_used():
    assert parse_addr("10.0.0.1", default_port=1234) == ("10.0.0.1", 1234)
    assert parse_addr("10.0.0.1:80", default_port=1234) == ("10.0.0.1", 80)


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1:abc", "10.0.0.1:", "[fd00::1]:x", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:-1",
     "10.0.0.1:+80", "10.0.0.1:7_946", "10.0.0.1: 80", "[fd00::1]7946", "[fd00::1"],
)
def test_bad_port(text):
    with pytest.raises(ValueError, match="address"):
        parse_addr(text)


@pytest.mark.parametrize("text", ["", ":7946", "[]:7946", "   "])
def test_no_host(text):
    with pytest.raises(ValueError, match="no host"):
        parse_addr(text)
