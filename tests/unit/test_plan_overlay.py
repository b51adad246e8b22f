"""Desired overlay state from rows, and its diff."""

from __future__ import annotations

from meshnet.plan import overlay as po


def ep(eid: str, network: str, node: str, ip: str) -> po.EndpointView:
    return po.EndpointView(eid, network, node, ip, po.mac_for(ip), f"/run/netns/mne-{eid}", True, "eth0")


NODES = {"n1": "10.249.0.1", "n2": "10.249.0.2", "n3": "10.249.0.3"}
NETS = [po.NetView("A", 4097, 24), po.NetView("B", 4098, 24)]


def test_only_networks_with_local_endpoints_get_devices():
    eps = [ep("e1", "A", "n1", "10.10.0.2"), ep("e2", "A", "n2", "10.10.0.10"),
           ep("e3", "B", "n2", "10.10.1.2")]
    st = po.desired("n1", 1420, NODES, NETS, eps)
    assert {b.name for b in st.bridges} == {"mnb-4097"}
    assert {v.name for v in st.vxlans} == {"mnv-4097"}
    (vx,) = st.vxlans
    assert (vx.local, vx.mtu, vx.bridge, vx.port) == ("10.249.0.1", 1370, "mnb-4097", 4789)
    (local,) = st.endpoints
    assert (local.address, local.mtu, local.host_veth) == ("10.10.0.2/24", 1370, "mnh-e1")
    # Remote endpoints: FDB + neighbour; the all-zero entry only for nodes with endpoints here.
    assert st.fdb == {po.Fdb("mnv-4097", po.mac_for("10.10.0.10"), "10.249.0.2"),
                      po.Fdb("mnv-4097", po.ZERO_MAC, "10.249.0.2")}
    assert st.neigh == {po.Neigh("mnv-4097", "10.10.0.10", po.mac_for("10.10.0.10"))}


def test_endpoints_of_dead_nodes_and_unknown_networks_are_left_out():
    eps = [ep("e1", "A", "n1", "10.10.0.2"), ep("e2", "A", "n9", "10.10.0.10"),
           ep("e3", "Z", "n2", "10.10.5.2")]
    st = po.desired("n1", 1420, NODES, NETS, eps)
    assert st.fdb == frozenset() and st.neigh == frozenset() and len(st.endpoints) == 1


def test_node_without_endpoints_has_nothing():
    assert po.desired("n3", 1420, NODES, NETS, [ep("e1", "A", "n1", "10.10.0.2")]) == po.OverlayState()


def test_diff_orders_and_is_empty_when_equal():
    a = po.desired("n1", 1420, NODES, NETS, [ep("e1", "A", "n1", "10.10.0.2"),
                                             ep("e2", "A", "n2", "10.10.0.10")])
    assert po.diff(a, a) == []
    ops = po.diff(po.OverlayState(), a)
    kinds = [type(o.item).__name__ for o in ops]
    assert kinds == ["Bridge", "Vxlan", "Endpoint", "Fdb", "Fdb", "Neigh"]
    back = po.diff(a, po.OverlayState())
    assert [type(o.item).__name__ for o in back] == ["Fdb", "Fdb", "Neigh", "Endpoint", "Vxlan", "Bridge"]
    assert all(isinstance(o, po.Remove) for o in back)


def test_mac_is_derived_from_the_address():
    assert po.mac_for("10.10.0.2") == "02:6d:0a:0a:00:02"


ROUTED = [po.NetView("R", 4099, 24, "10.10.2.0/24", "l3"), po.NetView("A", 4097, 24, "10.10.0.0/24")]


def test_routed_network_has_routes_not_vxlan():
    eps = [ep("e1", "R", "n1", "10.10.2.2"), ep("e2", "R", "n2", "10.10.2.10"),
           ep("e4", "R", "n1", "10.10.2.3"), ep("e3", "A", "n2", "10.10.0.2")]
    st = po.desired("n1", 1420, NODES, ROUTED, eps, "mnet0")
    assert st.bridges == st.vxlans == st.fdb == frozenset()
    assert {(e.host_veth, e.bridge, e.mtu, e.address) for e in st.endpoints} == {
        ("mnr-e1", "", 1420, "10.10.2.2/24"), ("mnr-e4", "", 1420, "10.10.2.3/24")}
    assert st.routes == {po.Route("10.10.2.0/24", "mnet0"), po.Route("10.10.2.2/32", "mnr-e1"),
                         po.Route("10.10.2.3/32", "mnr-e4")}
    assert st.neigh == {po.Neigh("mnr-e1", "10.10.2.2", po.mac_for("10.10.2.2")),
                        po.Neigh("mnr-e4", "10.10.2.3", po.mac_for("10.10.2.3"))}
    assert st.filters == {po.L3Filter("mnet0", (("mnr-e1", "10.10.2.2", "10.10.2.0/24"),
                                                ("mnr-e4", "10.10.2.3", "10.10.2.0/24")))}
    # Nodes with no routed endpoint of their own get nothing, but everyone allows the
    # addresses: WireGuard needs them on the peer of the node that hosts them.
    assert po.desired("n3", 1420, NODES, ROUTED, eps, "mnet0") == po.OverlayState()
    assert po.allowed_ips(NODES, ROUTED, eps) == {"n1": ["10.10.2.2/32", "10.10.2.3/32"],
                                                  "n2": ["10.10.2.10/32"]}
    assert po.allowed_ips({"n1": NODES["n1"]}, ROUTED, eps) == {"n1": ["10.10.2.2/32", "10.10.2.3/32"]}


def test_routed_filter_goes_in_first_and_out_last():
    st = po.desired("n1", 1420, NODES, ROUTED, [ep("e1", "R", "n1", "10.10.2.2")], "mnet0")
    kinds = [type(op.item).__name__ for op in po.diff(po.OverlayState(), st)]
    assert kinds[0] == "L3Filter" and kinds.index("Endpoint") < kinds.index("Route")
    kinds = [type(op.item).__name__ for op in po.diff(st, po.OverlayState())]
    assert kinds[-1] == "L3Filter" and kinds.index("Route") < kinds.index("Endpoint")
