"""Network decisions: validation, subnet and VNI choice, and clash resolution."""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass

import pytest

from meshnet.errors import Conflict, MeshnetError
from meshnet.plan import networks as pn


@dataclass
class Net:
    id: str
    name: str
    subnet: str
    vni: int
    created: int
    deleted: bool = False


def test_names():
    assert pn.check_name("app-net_1.x") == "app-net_1.x"
    for bad in ("", "-x", "a/b", "a b", "x" * 64):
        with pytest.raises(MeshnetError, match="invalid network name"):
            pn.check_name(bad)


@pytest.mark.parametrize("text,message", [
    ("10.1.0.0/33", "invalid subnet"), ("banana", "invalid subnet"), ("10.1.0.1/24", "host bits"),
    ("fd00::/64", "only IPv4"), ("10.1.0.0/30", "too small")])
def test_bad_subnets(text, message):
    with pytest.raises(MeshnetError, match=message):
        pn.parse_subnet(text)


def test_labels():
    assert pn.parse_labels(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(MeshnetError, match="KEY=VALUE"):
        pn.parse_labels(["novalue"])


def test_subnet_checks_and_pick():
    live = [Net("a", "a", "10.10.0.0/24", 4097, 1)]
    routes = [("10.10.1.0/24", "eth0")]
    with pytest.raises(Conflict, match="overlaps network 'a'"):
        pn.check_subnet_free(ipaddress.ip_network("10.10.0.0/16"), live, [], "10.249.0.0/16")
    with pytest.raises(Conflict, match="transit range"):
        pn.check_subnet_free(ipaddress.ip_network("10.249.5.0/24"), [], [], "10.249.0.0/16")
    with pytest.raises(Conflict, match="via eth0"):
        pn.check_subnet_free(ipaddress.ip_network("10.10.1.128/25"), [], routes, "10.249.0.0/16")
    assert str(pn.pick_subnet("10.10.0.0/16", live, routes, "10.249.0.0/16")) == "10.10.2.0/24"
    with pytest.raises(MeshnetError, match="no free /24"):
        pn.pick_subnet("10.10.0.0/24", live, [], "10.249.0.0/16")


def test_vni_and_gateway():
    assert pn.pick_vni([]) == 4097
    assert pn.pick_vni([Net("a", "a", "x", 4097, 1), Net("b", "b", "y", 4098, 2)]) == 4099
    net = ipaddress.ip_network("10.10.3.0/24")
    assert pn.gateway_for(net, None) == "10.10.3.1"
    assert pn.gateway_for(net, "10.10.3.254") == "10.10.3.254"
    for bad in ("10.10.4.1", "10.10.3.0", "10.10.3.255", "nope"):
        with pytest.raises(MeshnetError):
            pn.gateway_for(net, bad)


def test_winners_are_the_same_in_any_order():
    nets = [Net("n1", "app", "10.10.0.0/24", 4097, 5), Net("n2", "app", "10.10.1.0/24", 4098, 3),
            Net("n3", "db", "10.10.2.0/24", 4098, 7),  # VNI clash with n2, later
            Net("n4", "web", "10.10.1.0/25", 4100, 9),  # subnet clash with n2, later
            Net("n5", "old", "10.10.9.0/24", 4200, 1, deleted=True)]
    outcomes = set()
    for perm in itertools.permutations(nets):
        live, losers = pn.winners(perm)
        outcomes.add((tuple(n.id for n in live), tuple(sorted(n.id for n in losers))))
    assert outcomes == {(("n2",), ("n1", "n3", "n4"))}


def test_equal_created_breaks_ties_by_id():
    a, b = Net("aaa", "x", "10.10.0.0/24", 4097, 5), Net("bbb", "x", "10.10.1.0/24", 4098, 5)
    assert [n.id for n in pn.winners([b, a])[0]] == ["aaa"]


def test_options():
    assert pn.parse_options({}) == {} and pn.parse_options({"mode": "l2"}) == {}
    assert pn.parse_options({"mode": "l3"}) == {"mode": "l3"}
    for options, message in (({"mode": "l4"}, "invalid network mode 'l4'"),
                             ({"vlan": "1"}, "unknown network option 'vlan'")):
        with pytest.raises(MeshnetError, match=message):
            pn.parse_options(options)
    with pytest.raises(MeshnetError, match="need the WireGuard transit"):
        pn.parse_options({"mode": "l3"}, "ipsec")
