"""Pure parts of meshnet.host.overlay and meshnet.host.firewall (no root, no kernel)."""

from __future__ import annotations

import copy

import pytest

from meshnet.errors import HostError
from meshnet.host import firewall, overlay
from meshnet.plan.overlay import Add, Bridge, Endpoint, Fdb, Neigh, Remove, Vxlan

EP = Endpoint("ep1", "/run/netns/mne-ep1", True, "mnh-ep1", "eth0", "10.61.1.2/24",
              "02:6d:0a:3d:01:02", 1450, "mnb-4101")


# --- endpoint alias -------------------------------------------------------------------

@pytest.mark.parametrize("owns,netns", [(True, "/run/netns/mne-ep1"), (False, "/proc/4242/ns/net"),
                                        (False, "/run/netns/name with space=x")])
def test_alias_round_trips(owns, netns):
    ep = Endpoint("abc123", netns, owns, "mnh-abc123", "eth0", "10.0.0.2/24", "02:00:00:00:00:01",
                  1450, "mnb-1")
    alias = overlay.endpoint_alias(ep)
    assert len(alias) < 256  # IFLA_IFALIAS limit
    assert overlay.parse_endpoint_alias(alias) == ("abc123", owns, netns)


@pytest.mark.parametrize("alias", [
    None, "", "someone else's alias", "meshnet-endpoint", "meshnet-endpoint id=x owns=1",
    "meshnet-endpoint owns=1 netns=/run/netns/x", "meshnet-endpoint id=x owns=2 netns=/run/netns/x",
    "meshnet-endpoint id=x owns=1 netns=", "meshnet-endpointid=x owns=1 netns=/x",
])
def test_foreign_or_broken_aliases_are_not_ours(alias):
    assert overlay.parse_endpoint_alias(alias) is None


# --- namespace names ------------------------------------------------------------------

@pytest.mark.parametrize("path,name", [("/run/netns/mne-1", "mne-1"), ("/var/run/netns/x", "x")])
def test_netns_name(path, name):
    assert overlay.netns_name(path) == name


@pytest.mark.parametrize("path", ["/proc/1/ns/net", "/run/netns/", "/run/netns/a/b", "mne-1",
                                  "/run/netns/..", "/tmp/netns/x"])
def test_netns_name_refuses_paths_meshnet_does_not_make(path):
    with pytest.raises(HostError, match="only"):
        overlay.netns_name(path)


# --- batches: what a Remove must keep ---------------------------------------------------

def test_reused_by_adds_names_devices_and_namespaces_of_adds_only():
    other = Endpoint("ep2", "/run/netns/mne-ep2", True, "mnh-ep2", "eth0", "10.61.1.3/24",
                     "02:6d:0a:3d:01:03", 1450, "mnb-4101")
    ops = [Remove(other), Remove(Bridge("mnb-9", 1450)), Add(Bridge("mnb-4101", 1450)),
           Add(Vxlan("mnv-4101", 4101, "10.249.0.1", 1450, "mnb-4101")), Add(EP),
           Add(Fdb("mnv-4101", "00:00:00:00:00:00", "10.249.0.2")),
           Add(Neigh("mnv-4101", "10.61.1.3", "02:6d:0a:3d:01:03"))]
    reused = overlay.reused_by_adds(ops)
    assert reused.devices == {"mnb-4101", "mnv-4101", "mnh-ep1"}
    assert reused.netns == {"/run/netns/mne-ep1"}


def test_describe_says_what_and_which():
    assert overlay.describe(Add(Bridge("mnb-1", 1450))) == "add bridge mnb-1 (mtu 1450)"
    fdb = Remove(Fdb("mnv-1", "00:00:00:00:00:00", "10.249.0.2"))
    assert overlay.describe(fdb) == "remove FDB entry 00:00:00:00:00:00 dst 10.249.0.2 on mnv-1"
    text = overlay.describe(Add(EP))
    assert "ep1" in text and "mnh-ep1" in text and "/run/netns/mne-ep1" in text
    stale = Endpoint("", "", False, "mnh-x", "", "", "", 0, "")
    assert overlay.describe(Remove(stale)).startswith("remove veth mnh-x (not made")


def test_vxlan_ok_checks_flags_and_fixed_attributes():
    good = {"IFLA_VXLAN_ID": 7, "IFLA_VXLAN_LOCAL": "10.249.0.1", "IFLA_VXLAN_PORT": 4789,
            "IFLA_VXLAN_LEARNING": 0, "IFLA_VXLAN_PROXY": 1, "IFLA_VXLAN_UDP_CSUM": 1}
    assert overlay._vxlan_ok(good, 7, "10.249.0.1", 4789)
    assert not overlay._vxlan_ok(good, 8, "10.249.0.1", 4789)
    assert not overlay._vxlan_ok(good, 7, "10.249.0.9", 4789)
    for key, bad in (("IFLA_VXLAN_LEARNING", 1), ("IFLA_VXLAN_PROXY", 0), ("IFLA_VXLAN_UDP_CSUM", 0),
                     ("IFLA_VXLAN_GROUP", "239.1.1.1")):
        assert not overlay._vxlan_ok({**good, key: bad})


# --- firewall ---------------------------------------------------------------------------

LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "meshnet", "handle": 2}},
    {"chain": {"family": "inet", "table": "meshnet", "name": "input", "handle": 1, "type": "filter",
               "hook": "input", "prio": 0, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "meshnet", "name": "output", "handle": 2, "type": "filter",
               "hook": "output", "prio": 0, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "meshnet", "chain": "input", "handle": 3, "expr": [
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "mnet0"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}},
        {"counter": {"packets": 3, "bytes": 150}}, {"drop": None}]}},
    {"rule": {"family": "inet", "table": "meshnet", "chain": "output", "handle": 4, "expr": [
        {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "mnet0"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}},
        {"counter": {"packets": 5, "bytes": 250}}, {"drop": None}]}},
]}


def test_guard_ruleset_replaces_the_table_in_one_script():
    script = firewall.guard_ruleset("mnet0", 4789)
    assert script.startswith("table inet meshnet {}\ndelete table inet meshnet\n")
    assert 'iifname != "mnet0" udp dport 4789 counter drop' in script
    assert 'oifname != "mnet0" udp dport 4789 counter drop' in script
    assert script.count("policy accept") == 2


@pytest.mark.parametrize("ifname,port", [('mnet0"; flush ruleset; "', 4789), ("", 4789),
                                         ("a" * 16, 4789), ("mnet0", 0), ("mnet0", 70000)])
def test_guard_ruleset_refuses_bad_input(ifname, port):
    with pytest.raises(HostError):
        firewall.guard_ruleset(ifname, port)


def test_guard_in_listing_recognises_exactly_the_guard():
    assert firewall.guard_in_listing(LISTING, "mnet0", 4789)
    assert not firewall.guard_in_listing(LISTING, "wg0", 4789)
    assert not firewall.guard_in_listing(LISTING, "mnet0", 8472)
    assert not firewall.guard_in_listing({"nftables": []}, "mnet0", 4789)


@pytest.mark.parametrize("mutate", [
    lambda items: items.pop(),  # output rule gone
    lambda items: items[2]["chain"].update(policy="drop"),
    lambda items: items[2]["chain"].update(prio=10),
    lambda items: items[4]["rule"]["expr"].__setitem__(3, {"accept": None}),
    lambda items: items.append(copy.deepcopy(items[4])),  # a second rule
    lambda items: items.append({"chain": {"family": "inet", "table": "meshnet", "name": "extra",
                                          "type": "filter", "hook": "forward", "prio": 0,
                                          "policy": "accept"}}),
])
def test_guard_in_listing_refuses_anything_else(mutate):
    listing = copy.deepcopy(LISTING)
    mutate(listing["nftables"])
    assert not firewall.guard_in_listing(listing, "mnet0", 4789)


def test_guard_counters():
    assert firewall.guard_counters(LISTING) == {"input": 3, "output": 5}
    assert firewall.guard_counters({"nftables": []}) == {}
