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
