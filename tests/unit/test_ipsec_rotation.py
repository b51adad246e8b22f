"""SPI/key rotation of the IPsec transit: which SAs should exist when (meshnet.plan.ipsec.plan).

Pure: time is a number passed in. Both ends of a pair are planned at the same moments and
must agree (what one sends with, the other has an inbound SA for), across epoch boundaries
and key changes, also with the two clocks or reconciles apart by less than the grace.
"""

from __future__ import annotations

import base64

import pytest
from nacl.public import PrivateKey

from meshnet.host.ipsec import parse_policies
from meshnet.plan.ipsec import Keying, Schedule, epoch_at, peer_sas, plan, prune, rekey

SCHED = Schedule(period=100.0, grace=10.0, delay=4.0)
A = ("192.168.50.11", "10.249.0.1")  # underlay, transit
B = ("192.168.50.12", "10.249.0.2")


def keypair() -> tuple[str, str]:
    k = PrivateKey.generate()
    return base64.b64encode(bytes(k)).decode(), base64.b64encode(bytes(k.public_key)).decode()


def plan_a(keyings, now):
    return plan(keyings, A[0], A[1], f"{B[0]}:51820", B[1], now, SCHED)


def plan_b(keyings, now):
    return plan(keyings, B[0], B[1], f"{A[0]}:51820", A[1], now, SCHED)


def understood(sender, receiver) -> bool:
    """The receiver holds an inbound SA equal to the sender's outbound one."""
    return sender.out in receiver.inbound


@pytest.fixture
def keys():
    return keypair(), keypair()


def test_epoch_changes_spi_and_key(keys):
    (a, _), (_, b_pub) = keys
    sas = [peer_sas(a, A[0], A[1], b_pub, f"{B[0]}:1", B[1], epoch) for epoch in range(4)]
    assert len({s.out.spi for s in sas}) == 4 and len({s.inbound.spi for s in sas}) == 4
    assert len({s.out.key for s in sas}) == 4
    # The out policy names the outbound SA; in/fwd accept any SA between the two hosts.
    pols = {p.dir: p for p in sas[2].policies}
    assert pols["out"].spi == sas[2].out.spi and pols["in"].spi == 0 and pols["fwd"].spi == 0


def test_epoch_at():
    assert [epoch_at(t, 100.0) for t in (0, 99.9, 100, 250)] == [0, 0, 1, 2]


def test_steady_state_and_boundary(keys):
    (a, a_pub), (b, b_pub) = keys
    ka, kb = (Keying(a, b_pub),), (Keying(b, a_pub),)
    mid = plan_a(ka, 550.0)  # epoch 5, well after its start
    assert mid.out == peer_sas(a, A[0], A[1], b_pub, f"{B[0]}:1", B[1], 5).out
    assert {sa.spi for sa in mid.inbound} == {
        peer_sas(a, A[0], A[1], b_pub, f"{B[0]}:1", B[1], e).inbound.spi for e in (5, 6)}
    # Just after the boundary to epoch 6: new outbound, and epoch 5's inbound is kept for the grace.
    after = plan_a(ka, 603.0)
    assert after.out.spi != mid.out.spi
    assert len(after.inbound) == 3
    assert set(mid.inbound) < set(after.inbound)
    # After the grace, only epochs 6 and 7 are accepted.
    later = plan_a(ka, 611.0)
    assert later.out == after.out and len(later.inbound) == 2
    assert mid.inbound[0] not in later.inbound
    # Both ends agree at every moment, also with their clocks up to the grace apart.
    for t in range(0, 400, 3):
        for skew in (0.0, 2.5, 9.0):
            assert understood(plan_a(ka, t + skew), plan_b(kb, t))
            assert understood(plan_b(kb, t + skew), plan_a(ka, t))
            assert understood(plan_a(ka, t), plan_b(kb, t + skew))


def test_a_new_key_switches_after_the_delay_and_old_inbound_stays_for_the_grace(keys):
    (a, a_pub), (b, b_pub) = keys
    a2, a2_pub = keypair()
    ka = rekey((), a, b_pub, 500.0, SCHED)
    assert ka == (Keying(a, b_pub, 0.0),)  # the first keying switches at once
    assert rekey(ka, a, b_pub, 520.0, SCHED) == ka  # the same keys: nothing changes
    kb = rekey((), b, a_pub, 500.0, SCHED)
    # B learns A's new public key at 520, A switches its device at 521 (after the acks).
    kb2 = rekey(kb, b, a2_pub, 520.0, SCHED)
    ka2 = rekey(ka, a2, b_pub, 521.0, SCHED)
    assert kb2 == (Keying(b, a_pub, 0.0), Keying(b, a2_pub, 520.0))
    old_out = plan_a(ka, 520.5).out
    # Before the delay each side still sends with the old keys, and both accept either.
    pa, pb = plan_a(ka2, 522.0), plan_b(kb2, 522.0)
    assert pa.out == old_out and understood(pa, pb) and understood(pb, pa)
    assert pa.policies[0].spi == old_out.spi
    assert len(pa.inbound) == 4  # epochs 5, 6 for both key pairs
    # After the delay both send with the new pair; the old inbound stays for the grace.
    for t in (520.5, 521.5, 523.0, 524.1, 525.0, 526.0, 530.0, 534.5, 536.0, 540.0):
        pa, pb = plan_a(ka2 if t >= 521 else ka, t), plan_b(kb2, t)
        assert understood(pa, pb), t
        assert understood(pb, pa), t
    assert plan_a(ka2, 525.5).out != old_out
    assert plan_a(ka2, 525.5).out in plan_b(kb2, 525.5).inbound
    assert len(plan_a(ka2, 534.0).inbound) == 4
    assert len(plan_a(ka2, 536.0).inbound) == 2  # grace over: the old key's SAs go
    # And the remembered keyings shrink to the new pair then.
    assert prune(ka2, 536.0, SCHED) == ka2[-1:]
    assert rekey(ka2, a2, b_pub, 536.0, SCHED) == ka2[-1:]


def test_a_third_key_drops_the_first(keys):
    (a, _), (_, b_pub) = keys
    k = rekey((), a, b_pub, 0.0, SCHED)
    k = rekey(k, keypair()[0], b_pub, 10.0, SCHED)
    third = keypair()[0]
    k = rekey(k, third, b_pub, 11.0, SCHED)
    assert len(k) == 2 and k[-1].private_key == third


def test_plan_needs_a_keying():
    with pytest.raises(ValueError):
        plan_a((), 0.0)


def test_parse_policy_template_spi():
    text = """src 10.249.0.1/32 dst 10.249.0.2/32 uid 0
\tdir out action allow index 1 priority 0 ptype main share any flag  (0x00000000)
\ttmpl src 10.201.0.1 dst 10.201.0.2
\t\tproto esp spi 0x4ab54ccd(1253395661) reqid 28014(0x00006d6e) mode tunnel
\t\tlevel required share any
\tif_id 0x6d6e
"""
    (pol,) = parse_policies(text)
    assert pol.tmpl_spi == 0x4AB54CCD and pol.dir == "out"
