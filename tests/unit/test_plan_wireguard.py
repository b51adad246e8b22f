from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.config import KEEPALIVE
from meshnet.plan.wireguard import Device, Op, Peer, RemovePeer, SetDevice, SetPeer, desired, diff


@dataclass
class N:
    id: str
    transit_ip: str
    wg_pub: str
    endpoint: str
    state: str = "active"
    version: int = 1
    deleted: bool = False


def apply(current: Device | None, ops: list[Op]) -> Device:
    """A simulated device: what either applier does for each op."""
    key, port = (current.private_key, current.listen_port) if current else ("", 0)
    peers = dict(current.peers) if current else {}
    for op in ops:
        if isinstance(op, SetDevice):
            key, port = op.private_key, op.listen_port
        elif isinstance(op, RemovePeer):
            assert op.public_key in peers, "removing a peer the device does not have"
            del peers[op.public_key]
        elif isinstance(op, SetPeer):
            peers[op.peer.public_key] = op.peer
        else:
            raise AssertionError(op)
    return Device(key, port, peers)


NODES = [
    N("me", "10.77.0.1", "pk-me", "192.0.2.1:51820"),
    N("b", "10.77.0.2", "pk-b", "192.0.2.2:51820"),
    N("c", "10.77.0.3", "pk-c", "192.0.2.3:51820"),
    N("d", "10.77.0.4", "pk-d", "192.0.2.4:51820", state="left"),
    N("e", "10.77.0.5", "pk-e", "192.0.2.5:51820", deleted=True),
]


def want(nodes=NODES) -> Device:
    return desired("me", "priv", 51820, nodes)


def test_desired_excludes_self_left_and_deleted():
    dev = want()
    assert (dev.private_key, dev.listen_port) == ("priv", 51820)
    assert sorted(dev.peers) == ["pk-b", "pk-c"]
    assert dev.peers["pk-b"] == Peer("pk-b", "192.0.2.2:51820", ("10.77.0.2/32",), KEEPALIVE)


def test_allowed_ips_are_single_hosts():
    for peer in want().peers.values():
        assert len(peer.allowed_ips) == 1
        assert peer.allowed_ips[0].endswith("/32")
    v6 = desired("me", "priv", 1, [N("x", "fd00::7", "pk-x", "[fd00::1]:1")])
    assert v6.peers["pk-x"].allowed_ips == ("fd00::7/128",)


def test_diff_of_equal_devices_is_empty():
    assert diff(want(), want()) == []


def test_diff_from_nothing():
    ops = diff(None, want())
    assert ops[0] == SetDevice("priv", 51820)
    assert {op.peer.public_key for op in ops[1:]} == {"pk-b", "pk-c"}
    assert apply(None, ops) == want()


def test_diff_is_idempotent():
    current = Device("old", 1, {"pk-z": Peer("pk-z", None, ("10.77.0.9/32",))})
    ops = diff(current, want())
    after = apply(current, ops)
    assert after == want()
    assert diff(after, want()) == []


def test_diff_removes_stale_peers_only():
    current = apply(None, diff(None, want()))
    current = replace(current, peers={**current.peers, "pk-gone": Peer("pk-gone", None, ("10.77.0.8/32",))})
    assert diff(current, want()) == [RemovePeer("pk-gone")]


def test_diff_updates_changed_endpoint_only():
    current = want()
    moved = [replace(n, endpoint="198.51.100.7:4000") if n.id == "c" else n for n in NODES]
    ops = diff(current, want(moved))
    assert ops == [SetPeer(Peer("pk-c", "198.51.100.7:4000", ("10.77.0.3/32",)))]


def test_diff_changes_key_or_port():
    assert diff(want(), desired("me", "priv2", 51820, NODES)) == [SetDevice("priv2", 51820)]
    assert diff(want(), desired("me", "priv", 51821, NODES)) == [SetDevice("priv", 51821)]


def test_node_leaving_removes_its_peer():
    gone = [replace(n, state="left") if n.id == "b" else n for n in NODES]
    assert diff(want(), want(gone)) == [RemovePeer("pk-b")]


def test_ops_are_ordered_deterministically():
    current = Device("priv", 51820, {k: Peer(k, None, ("10.0.0.1/32",)) for k in ("z", "y", "x")})
    ops = diff(current, want())
    assert ops[:3] == [RemovePeer("x"), RemovePeer("y"), RemovePeer("z")]
    assert [op.peer.public_key for op in ops[3:]] == ["pk-b", "pk-c"]


KEYS = [f"pk{i}" for i in range(6)]
peers_st = st.builds(
    Peer,
    public_key=st.sampled_from(KEYS),
    endpoint=st.none() | st.sampled_from(["192.0.2.1:1", "192.0.2.2:2"]),
    allowed_ips=st.lists(st.sampled_from(["10.77.0.1/32", "10.77.0.2/32", "0.0.0.0/0"]),
                         max_size=2).map(tuple),
    keepalive=st.sampled_from([0, KEEPALIVE]),
)
devices = st.builds(
    lambda key, port, peers: Device(key, port, {p.public_key: p for p in peers}),
    st.sampled_from(["k1", "k2"]), st.sampled_from([51820, 51821]), st.lists(peers_st, max_size=6),
)


@settings(max_examples=50, deadline=None)
@given(current=st.none() | devices, target=devices)
def test_diff_reaches_any_desired_device(current, target):
    ops = diff(current, target)
    after = apply(current, ops)
    assert after == target
    assert diff(after, target) == []
    if current == target:
        assert ops == []
    # no op is wasted: every SetPeer changes something and every RemovePeer removes something
    have = current.peers if current else {}
    for op in ops:
        if isinstance(op, SetPeer):
            assert have.get(op.peer.public_key) != op.peer
        if isinstance(op, RemovePeer):
            assert op.public_key in have and op.public_key not in target.peers


def test_routed_endpoint_addresses_join_their_nodes_allowed_ips():
    nodes = [N("me", "10.77.0.1", "pk-a", "192.0.2.1:51820"), N("b", "10.77.0.2", "pk-b", "192.0.2.2:51820")]
    dev = desired("me", "priv", 51820, nodes, None, {"b": ["10.10.2.9/32", "10.10.2.10/32"],
                                                      "me": ["10.10.2.2/32"]})
    assert dev.peers["pk-b"].allowed_ips == ("10.10.2.10/32", "10.10.2.9/32", "10.77.0.2/32")
    assert "pk-a" not in dev.peers
