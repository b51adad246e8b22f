"""KernelWireGuard.read() on netlink messages shaped like pyroute2 0.9's, without a kernel.

Not marked `kernel`: it runs with the host suite, so the shapes the guest found
(keys as base64 bytes from `get_attr`, a peer split across two dump messages,
IPv6 endpoints) stay covered where the real kernel is not.
"""

from __future__ import annotations

import meshnet.host.wireguard as wgmod
from meshnet.plan.wireguard import Peer, PeerStats

K1 = "a" * 43 + "="
K2 = "b" * 43 + "="
PRIV = "c" * 43 + "="


class Nla(dict):
    """What pyroute2 hands out: a dict with `get_attr` over its attributes."""

    def __init__(self, attrs: dict | None = None, **fields) -> None:
        super().__init__(fields)
        self.attrs = attrs or {}

    def get_attr(self, name):
        return self.attrs.get(name)


def peer(key: str, **attrs) -> Nla:
    return Nla({"WGPEER_A_PUBLIC_KEY": key.encode(), **attrs})


def test_read_parses_keys_endpoints_split_peers(monkeypatch):
    first = Nla({
        "WGDEVICE_A_PRIVATE_KEY": PRIV.encode(),
        "WGDEVICE_A_LISTEN_PORT": 51820,
        "WGDEVICE_A_PEERS": [
            peer(K1, WGPEER_A_ENDPOINT=Nla(addr="10.248.0.12", port=51820),
                 WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL=25,
                 WGPEER_A_LAST_HANDSHAKE_TIME=Nla(tv_sec=1700000000, tv_nsec=5),
                 WGPEER_A_RX_BYTES=100, WGPEER_A_TX_BYTES=200,
                 WGPEER_A_ALLOWEDIPS=[Nla(addr="10.249.0.2/32")]),
            peer(K2, WGPEER_A_ENDPOINT=Nla(addr="fd00::2", port=51821),
                 WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL=0,
                 WGPEER_A_LAST_HANDSHAKE_TIME=Nla(tv_sec=0, tv_nsec=0),
                 WGPEER_A_RX_BYTES=0, WGPEER_A_TX_BYTES=0,
                 WGPEER_A_ALLOWEDIPS=[Nla(addr="10.249.0.3/32")]),
        ],
    })
    # The next dump message: no device attributes, K2 continues with more allowed IPs.
    second = Nla({"WGDEVICE_A_PEERS": [peer(K2, WGPEER_A_ALLOWEDIPS=[Nla(addr="fd01::3/128")])]})

    class FakeWG:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def info(self, ifname):
            assert ifname == "mnet0"
            return (first, second)

    monkeypatch.setattr(wgmod, "WireGuard", FakeWG)
    device, stats = wgmod.KernelWireGuard().read("mnet0")
    assert device.private_key == PRIV and device.listen_port == 51820
    assert device.peers == {
        K1: Peer(K1, "10.248.0.12:51820", ("10.249.0.2/32",), 25),
        K2: Peer(K2, "[fd00::2]:51821", ("10.249.0.3/32", "fd01::3/128"), 0),
    }
    assert sorted(stats, key=lambda s: s.public_key) == [
        PeerStats(K1, "10.248.0.12:51820", 1700000000.0, 100, 200),
        PeerStats(K2, "[fd00::2]:51821", 0.0, 0, 0),
    ]


def test_nla_key_accepts_bytes_str_and_nla():
    assert wgmod._nla_key(K1.encode()) == K1
    assert wgmod._nla_key(K1) == K1
    assert wgmod._nla_key(Nla(value=K1.encode())) == K1
