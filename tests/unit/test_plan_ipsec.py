from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from meshnet.plan.ipsec import KEY_BYTES, SPI_MIN, endpoint_ip, peer_sas, public_of, shared_secret


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def keypair() -> tuple[str, str]:
    k = PrivateKey.generate()
    return b64(bytes(k)), b64(bytes(k.public_key))


def pair(a=None, b=None):
    a = a or keypair()
    b = b or keypair()
    sa_a = peer_sas(a[0], "192.168.50.11", "10.249.0.1", b[1], "192.168.50.12:51820", "10.249.0.2")
    sa_b = peer_sas(b[0], "192.168.50.12", "10.249.0.2", a[1], "192.168.50.11:51820", "10.249.0.1")
    return sa_a, sa_b


def test_public_of_matches_nacl():
    priv, pub = keypair()
    assert public_of(priv) == pub


def test_shared_secret_is_symmetric():
    a, b = keypair(), keypair()
    assert shared_secret(a[0], b[1]) == shared_secret(b[0], a[1])


def test_both_sides_derive_the_same_sa_pair():
    sa_a, sa_b = pair()
    assert sa_a.out == sa_b.inbound
    assert sa_a.inbound == sa_b.out
    assert sa_a.out.src == "192.168.50.11" and sa_a.out.dst == "192.168.50.12"
    assert sa_a.out.inner_src == "10.249.0.1/32" and sa_a.out.inner_dst == "10.249.0.2/32"


def test_directions_differ():
    sa_a, _ = pair()
    assert sa_a.out.spi != sa_a.inbound.spi
    assert sa_a.out.key != sa_a.inbound.key
    assert len(sa_a.out.key) == len(sa_a.inbound.key) == KEY_BYTES


def test_policies_out_in_fwd():
    sa_a, _ = pair()
    pols = {p.dir: p for p in sa_a.policies}
    assert set(pols) == {"out", "in", "fwd"}
    assert (pols["out"].src, pols["out"].dst) == ("10.249.0.1/32", "10.249.0.2/32")
    assert (pols["out"].tmpl_src, pols["out"].tmpl_dst) == ("192.168.50.11", "192.168.50.12")
    for d in ("in", "fwd"):
        assert (pols[d].src, pols[d].dst) == ("10.249.0.2/32", "10.249.0.1/32")
        assert (pols[d].tmpl_src, pols[d].tmpl_dst) == ("192.168.50.12", "192.168.50.11")


def test_a_different_key_pair_gives_different_sas():
    a, b, c = keypair(), keypair(), keypair()
    ab, _ = pair(a, b)
    ac, _ = pair(a, c)
    assert ab.out.key != ac.out.key and ab.out.spi != ac.out.spi
    assert ab.inbound.key != ac.inbound.key
    # A rotated key on our side changes both directions too.
    a2 = keypair()
    a2b, _ = pair(a2, b)
    assert a2b.out.key != ab.out.key and a2b.inbound.key != ab.inbound.key


def test_deterministic():
    a, b = keypair(), keypair()
    assert pair(a, b) == pair(a, b)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_spis_in_range(ka, kb):
    a = (b64(ka), public_of(b64(ka)))
    b = (b64(kb), public_of(b64(kb)))
    sa_a, sa_b = pair(a, b)
    for sa in (sa_a.out, sa_a.inbound, sa_b.out, sa_b.inbound):
        assert SPI_MIN <= sa.spi < 2**32


@pytest.mark.parametrize("endpoint,ip", [("10.0.0.1:51820", "10.0.0.1"), ("[fd00::1]:51820", "fd00::1"),
                                         ("10.0.0.2", "10.0.0.2"), ("fd00::2", "fd00::2")])
def test_endpoint_ip(endpoint, ip):
    assert endpoint_ip(endpoint) == ip
