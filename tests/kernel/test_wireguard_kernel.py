"""Kernel WireGuard and ESP between two namespaces, for real.

Runs inside the qemu guest of tests/kernel/run (Debian's kernel has WireGuard
and ESP; the host's has neither). On the host these tests are deselected with
`-m "not kernel"`; they are deliberately not skipped there.
"""

from __future__ import annotations

import base64
import re
import secrets

import pytest
from nacl.public import PrivateKey

pytestmark = pytest.mark.kernel

WG_PORTS = (51820, 51821)
TUNNEL = ("10.202.0.1", "10.202.0.2")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def wg_device(ns: str, ifname: str = "wg0"):
    """The kernel's view of a WireGuard device, read through pyroute2."""
    from pyroute2 import WireGuard

    with WireGuard(netns=ns) as wg:
        msgs = list(wg.info(ifname))
    assert len(msgs) == 1, msgs
    return msgs[0]


def key_of(nla) -> str:
    """A key attribute decoded by pyroute2 (base64, as str)."""
    value = nla["value"] if not isinstance(nla, bytes | str) else nla
    return value.decode() if isinstance(value, bytes) else value


def peers_of(device) -> list:
    return device.get_attr("WGDEVICE_A_PEERS") or []


def make_wireguard(side, key: PrivateKey, addr: str, port: int) -> None:
    from pyroute2 import IPRoute, WireGuard

    with IPRoute(netns=side.ns) as ipr:
        ipr.link("add", ifname="wg0", kind="wireguard")
        (idx,) = ipr.link_lookup(ifname="wg0")
        ipr.addr("add", index=idx, address=addr, prefixlen=24)
    with WireGuard(netns=side.ns) as wg:
        wg.set("wg0", private_key=b64(bytes(key)), listen_port=port)
    with IPRoute(netns=side.ns) as ipr:
        ipr.link("set", index=idx, state="up")


def add_peer(side, peer_key: PrivateKey, peer, port: int, tunnel_ip: str) -> None:
    from pyroute2 import WireGuard

    with WireGuard(netns=side.ns) as wg:
        wg.set(
            "wg0",
            peer={
                "public_key": b64(bytes(peer_key.public_key)),
                "endpoint_addr": peer.addr,
                "endpoint_port": port,
                "persistent_keepalive": 15,
                "allowed_ips": [f"{tunnel_ip}/32"],
            },
        )


def test_wireguard_tunnel_through_pyroute2(ns_pair: tuple) -> None:
    a, b = ns_pair
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    make_wireguard(a, key_a, TUNNEL[0], WG_PORTS[0])
    make_wireguard(b, key_b, TUNNEL[1], WG_PORTS[1])
    add_peer(a, key_b, b, WG_PORTS[1], TUNNEL[1])
    add_peer(b, key_a, a, WG_PORTS[0], TUNNEL[0])

    with a.capture() as packets:
        a.run("ping", "-c", "3", "-W", "5", TUNNEL[1])
    # On the veth, the pings exist only as WireGuard UDP between the ports.
    assert packets, "nothing captured on the veth"
    for line in packets:
        assert "UDP" in line, line
        assert re.search(rf"\.({WG_PORTS[0]}|{WG_PORTS[1]})\b", line), line
    assert not any("ICMP" in line for line in packets)

    # The kernel's view, read back through pyroute2.
    dev_a = wg_device(a.ns)
    assert key_of(dev_a.get_attr("WGDEVICE_A_PUBLIC_KEY")) == b64(bytes(key_a.public_key))
    assert dev_a.get_attr("WGDEVICE_A_LISTEN_PORT") == WG_PORTS[0]
    (peer,) = peers_of(dev_a)
    assert key_of(peer.get_attr("WGPEER_A_PUBLIC_KEY")) == b64(bytes(key_b.public_key))
    assert peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 15
    endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["addr"], endpoint["port"]) == (b.addr, WG_PORTS[1])
    assert peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")["tv_sec"] > 0
    assert peer.get_attr("WGPEER_A_RX_BYTES") > 0
    assert peer.get_attr("WGPEER_A_TX_BYTES") > 0
    allowed = [ip["addr"] for ip in peer.get_attr("WGPEER_A_ALLOWEDIPS")]
    assert allowed == [f"{TUNNEL[1]}/32"]

    # Remove the peer: it is gone, and so is the path through the tunnel.
    from pyroute2 import WireGuard

    with WireGuard(netns=a.ns) as wg:
        wg.set("wg0", peer={"public_key": b64(bytes(key_b.public_key)), "remove": True})
    assert peers_of(wg_device(a.ns)) == []
    with pytest.raises(AssertionError):
        a.run("ping", "-c", "1", "-W", "2", TUNNEL[1])


def xfrm_packet_counts(side) -> dict[int, int]:
    """SPI -> packets counted by `ip -s xfrm state` in the namespace of `side`."""
    out = side.run("ip", "-s", "xfrm", "state")
    counts = {}
    for block in re.split(r"^(?=src )", out, flags=re.M):
        spi = re.search(r"proto esp spi 0x([0-9a-f]+)", block)
        packets = re.search(r"lifetime current:\s+\d+\(bytes\), (\d+)\(packets\)", block)
        if spi and packets:
            counts[int(spi.group(1), 16)] = int(packets.group(1))
    return counts


def test_esp_transport_mode(ns_pair: tuple) -> None:
    a, b = ns_pair
    # One SA per direction: AES-GCM with a 16-byte key + 4-byte salt, 128-bit ICV.
    spi_ab, spi_ba = 0x1000 + secrets.randbelow(0x1000), 0x3000 + secrets.randbelow(0x1000)
    sas = [
        (a.addr, b.addr, spi_ab, "0x" + secrets.token_hex(20)),
        (b.addr, a.addr, spi_ba, "0x" + secrets.token_hex(20)),
    ]
    for side, peer in ((a, b), (b, a)):
        for src, dst, spi, key in sas:
            side.run(
                *f"ip xfrm state add src {src} dst {dst} proto esp spi {spi:#x} reqid 1"
                " mode transport aead".split(),
                "rfc4106(gcm(aes))",
                key,
                "128",
            )
        for direction, src, dst in (("out", side.addr, peer.addr), ("in", peer.addr, side.addr)):
            side.run(
                *f"ip xfrm policy add src {src}/32 dst {dst}/32 dir {direction}"
                f" tmpl src {src} dst {dst} proto esp reqid 1 mode transport".split()
            )

    with a.capture() as packets:
        a.run("ping", "-c", "3", "-W", "5", b.addr)
    assert packets, "nothing captured on the veth"
    for line in packets:
        assert "ESP(spi=" in line, line

    for side in (a, b):
        counts = xfrm_packet_counts(side)
        assert counts.get(spi_ab, 0) >= 3, (side.ns, counts)
        assert counts.get(spi_ba, 0) >= 3, (side.ns, counts)
