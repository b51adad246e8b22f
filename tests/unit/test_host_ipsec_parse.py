"""`ip xfrm` output parsing of meshnet.host.ipsec, on text recorded in the qemu guest
(Debian 12, iproute2 6.1, kernel 6.1): the host kernel has no ESP to produce it."""

from __future__ import annotations

from meshnet.host.ipsec import KernelPolicy, KernelState, parse_policies, parse_states
from meshnet.plan.ipsec import IF_ID

# `ip -s xfrm state`: two of ours (counters after a few pings, one with replays), and a
# transport-mode state of someone else's (no if_id).
STATES = """\
src 10.201.0.1 dst 10.201.0.2
\tproto esp spi 0x4ab54ccd(1253395661) reqid 28014(0x00006d6e) mode tunnel
\treplay-window 32 seq 0x00000000 flag  (0x00000000)
\taead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 (160 bits) 128
\tanti-replay context: seq 0x0, oseq 0x3, bitmap 0x00000000
\tif_id 0x6d6e
\tsel src 10.249.0.1/32 dst 10.249.0.2/32 uid 0
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\t  limit: soft (INF)(packets), hard (INF)(packets)
\t  expire add: soft 0(sec), hard 0(sec)
\t  expire use: soft 0(sec), hard 0(sec)
\tlifetime current:
\t  252(bytes), 3(packets)
\t  add 2026-11-26 21:11:54 use 2026-11-26 21:11:58
\tstats:
\t  replay-window 0 replay 0 failed 0
src 10.201.0.2 dst 10.201.0.1
\tproto esp spi 0x2b79b5d3(729396691) reqid 28014(0x00006d6e) mode tunnel
\treplay-window 32 seq 0x00000000 flag  (0x00000000)
\taead rfc4106(gcm(aes)) 0x626a5f4d4e26afd29f7ab3dff268c9f29988c92b (160 bits) 128
\tanti-replay context: seq 0x3, oseq 0x0, bitmap 0x00000007
\tif_id 0x6d6e
\tsel src 10.249.0.2/32 dst 10.249.0.1/32 uid 0
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\t  limit: soft (INF)(packets), hard (INF)(packets)
\t  expire add: soft 0(sec), hard 0(sec)
\t  expire use: soft 0(sec), hard 0(sec)
\tlifetime current:
\t  252(bytes), 3(packets)
\t  add 2026-11-26 21:11:53 use 2026-11-26 21:11:58
\tstats:
\t  replay-window 3 replay 2 failed 0
src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0x00001000(4096) reqid 1(0x00000001) mode transport
\treplay-window 0 seq 0x00000000 flag  (0x00000000)
\taead rfc4106(gcm(aes)) 0xffffffffffffffffffffffffffffffffffffffff (160 bits) 128
\tsel src 0.0.0.0/0 dst 0.0.0.0/0 uid 0
\tlifetime current:
\t  0(bytes), 0(packets)
\t  add 2026-11-26 21:11:53 use -
"""

# `ip -s xfrm policy` (the index shows only with -s); the last one is not ours.
POLICIES = """\
src 10.249.0.2/32 dst 10.249.0.1/32 uid 0
\tdir fwd action allow index 18 priority 0 ptype main share any flag  (0x00000000)
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\t  limit: soft (INF)(packets), hard (INF)(packets)
\t  expire add: soft 0(sec), hard 0(sec)
\t  expire use: soft 0(sec), hard 0(sec)
\tlifetime current:
\t  0(bytes), 0(packets)
\t  add 2026-11-26 21:11:54 use -
\ttmpl src 10.201.0.2 dst 10.201.0.1
\t\tproto esp spi 0x00000000(0) reqid 28014(0x00006d6e) mode tunnel
\t\tlevel required share any
\t\tenc-mask ffffffff auth-mask ffffffff comp-mask ffffffff
\tif_id 0x6d6e
src 10.249.0.1/32 dst 10.249.0.2/32 uid 0
\tdir out action allow index 1 priority 0 ptype main share any flag  (0x00000000)
\tlifetime current:
\t  0(bytes), 0(packets)
\t  add 2026-11-26 21:11:54 use -
\ttmpl src 10.201.0.1 dst 10.201.0.2
\t\tproto esp spi 0x00000000(0) reqid 28014(0x00006d6e) mode tunnel
\t\tlevel required share any
\t\tenc-mask ffffffff auth-mask ffffffff comp-mask ffffffff
\tif_id 0x6d6e
src 192.0.2.1/32 dst 192.0.2.2/32 uid 0
\tdir out action allow index 25 priority 0 ptype main share any flag  (0x00000000)
\ttmpl src 0.0.0.0 dst 0.0.0.0
\t\tproto esp spi 0x00000000(0) reqid 1(0x00000001) mode transport
"""


def test_parse_states():
    ours, theirs, other = parse_states(STATES)
    assert ours == KernelState("10.201.0.1", "10.201.0.2", 0x4AB54CCD,
                               bytes.fromhex("0102030405060708090a0b0c0d0e0f1011121314"), "tunnel",
                               IF_ID, "10.249.0.1/32", "10.249.0.2/32", 252, 3, 0)
    assert theirs.spi == 729396691 and theirs.src == "10.201.0.2"
    assert theirs.replay == 5  # behind the window + within it
    assert theirs.key.hex() == "626a5f4d4e26afd29f7ab3dff268c9f29988c92b"
    assert (theirs.bytes, theirs.packets) == (252, 3)
    assert other.if_id == 0 and other.mode == "transport"


def test_parse_policies():
    fwd, out, other = parse_policies(POLICIES)
    assert fwd == KernelPolicy("10.249.0.2/32", "10.249.0.1/32", "fwd", 18, IF_ID,
                               "10.201.0.2", "10.201.0.1")
    assert out == KernelPolicy("10.249.0.1/32", "10.249.0.2/32", "out", 1, IF_ID,
                               "10.201.0.1", "10.201.0.2")
    assert other.if_id == 0 and other.index == 25


def test_empty_output():
    assert parse_states("") == [] and parse_policies("") == []
