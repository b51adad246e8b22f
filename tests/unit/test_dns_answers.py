"""dns/answers.py: every rule with real DNS packets built by dnslib; fuzzing never raises."""

from __future__ import annotations

import time

from dnslib import EDNS0, QTYPE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dns.answers import NOERROR, NXDOMAIN, Responder, answer, error_reply, is_query
from meshnet.dns.view import DnsView

BACKENDS = ("10.10.1.3", "10.10.1.4", "10.10.1.5")
VIEW = DnsView(
    a={"backend": BACKENDS, "tasks.backend": BACKENDS, "backend.1": ("10.10.1.3",),
       "frontend": ("10.10.1.2",), "web": ()},
    ptr={"10.10.1.3": "backend.1", "10.10.1.2": "frontend.1"},
    forwarders=("127.0.0.1:5353",),
    subnets=("10.10.1.0/24",),
)


def ask(name: str, qtype: str = "A", view: DnsView = VIEW, **kw) -> DNSRecord | None:
    q = DNSRecord.question(name, qtype)
    wire = answer(q.pack(), view, **kw)
    if wire is None:
        return None
    r = DNSRecord.parse(wire)
    assert r.header.id == q.header.id and r.header.qr == 1
    assert str(r.q.qname) == str(q.q.qname) and r.q.qtype == q.q.qtype
    return r


def addrs(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A]


def test_a_answers_every_address_ttl_0_authoritative():
    r = ask("backend")
    assert r.header.rcode == NOERROR and r.header.aa == 1 and r.header.ra == 1
    assert sorted(addrs(r)) == sorted(BACKENDS)
    assert all(rr.ttl == 0 for rr in r.rr)
    assert addrs(ask("frontend")) == ["10.10.1.2"]


def test_names_match_case_insensitively_with_or_without_trailing_dot():
    for name in ("backend", "backend.", "BackEnd", "BACKEND.", "Tasks.Backend", "backend.1."):
        r = ask(name)
        assert r.header.rcode == NOERROR and addrs(r), name
        assert str(r.rr[0].rname) == str(DNSRecord.question(name).q.qname)   # case kept (0x20)


def test_round_robin_rotates_the_order_per_query():
    firsts = [addrs(ask("backend"))[0] for _ in range(6)]
    assert set(firsts) == set(BACKENDS)
    orders = [tuple(addrs(ask("tasks.backend"))) for _ in range(3)]
    assert len(set(orders)) == 3 and all(sorted(o) == sorted(BACKENDS) for o in orders)


def test_round_robin_beyond_prebuilt_rotations():
    many = tuple(f"10.10.2.{i}" for i in range(1, 31))
    view = DnsView(a={"big": many})
    firsts = {addrs(ask("big", view=view, tcp=True))[0] for _ in range(30)}
    assert len(firsts) == 30


def test_aaaa_and_other_types_for_a_known_name_are_nodata():
    for qtype in ("AAAA", "MX", "TXT", "SRV"):
        r = ask("backend", qtype)
        assert r.header.rcode == NOERROR and not r.rr, qtype


def test_known_name_without_addresses_is_nodata():
    r = ask("web")
    assert r.header.rcode == NOERROR and not r.rr


def test_ptr_for_a_known_address():
    r = ask("3.1.10.10.in-addr.arpa", "PTR")
    assert r.header.rcode == NOERROR
    assert [str(rr.rdata) for rr in r.rr] == ["backend.1."]
    assert str(ask("2.1.10.10.in-addr.arpa.", "PTR").rr[0].rdata) == "frontend.1."


def test_ptr_unknown_inside_the_overlay_is_nxdomain_outside_forwarded():
    assert ask("99.1.10.10.in-addr.arpa", "PTR").header.rcode == NXDOMAIN
    assert ask("8.8.8.8.in-addr.arpa", "PTR") is None
    assert ask("1.10.10.in-addr.arpa", "PTR") is None            # not a full address
    assert ask("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa", "PTR") is None


def test_unknown_single_labels_and_internal_shapes_are_nxdomain():
    for name in ("nope", "NOPE.", "localhost", "tasks.nope", "nope.3", "backend.9"):
        r = ask(name)
        assert r is not None and r.header.rcode == NXDOMAIN and not r.rr, name
    assert ask("nope", "AAAA").header.rcode == NXDOMAIN


def test_external_names_are_forwarded():
    for name, qtype in (("example.com", "A"), ("example.com.", "AAAA"), ("a.b.c.example.org", "MX"),
                        ("tasks.backend.example.com", "A"), (".", "NS")):
        assert ask(name, qtype) is None, name


def test_names_outside_the_view_are_not_resolved():
    other = DnsView(a={"db": ("10.20.0.2",)}, subnets=("10.20.0.0/24",))
    assert ask("backend", view=other).header.rcode == NXDOMAIN
    assert addrs(ask("db", view=other)) == ["10.20.0.2"]


def test_a_new_view_is_seen_at_once():
    v1 = DnsView(a={"svc": ("10.10.1.7",)})
    assert addrs(ask("svc", view=v1)) == ["10.10.1.7"]
    v2 = DnsView(a={"svc": ("10.10.1.7", "10.10.1.8")})
    assert sorted(addrs(ask("svc", view=v2))) == ["10.10.1.7", "10.10.1.8"]


def test_udp_reply_that_does_not_fit_is_truncated_tcp_gets_all():
    many = tuple(f"10.10.3.{i}" for i in range(1, 101))
    view = DnsView(a={"big": many})
    q = DNSRecord.question("big")
    udp = answer(q.pack(), view)
    assert len(udp) <= 512
    r = DNSRecord.parse(udp)
    assert r.header.tc == 1 and 0 < len(r.rr) < 100
    tcp = DNSRecord.parse(answer(q.pack(), view, tcp=True))
    assert tcp.header.tc == 0 and len(tcp.rr) == 100
    q.add_ar(EDNS0(udp_len=4096))               # EDNS: up to 1232 bytes, still not all 100
    r = DNSRecord.parse(answer(q.pack(), view))
    assert r.header.tc == 1 and len(r.rr) > 28 and r.ar and r.ar[0].rtype == QTYPE.OPT


def test_edns_query_gets_an_opt_record_back():
    q = DNSRecord.question("backend")
    q.add_ar(EDNS0(udp_len=1232))
    r = DNSRecord.parse(answer(q.pack(), VIEW))
    assert r.header.rcode == NOERROR and [rr.rtype for rr in r.ar] == [QTYPE.OPT]


def test_cached_reply_patches_the_id():
    q = DNSRecord.question("frontend")
    first = answer(q.pack(), VIEW)
    q.header.id = (q.header.id + 1) % 65536
    second = answer(q.pack(), VIEW)
    assert second[:2] == q.pack()[:2] and second[2:] == first[2:]


def test_not_queries_are_none_and_malformed_get_formerr():
    assert answer(b"", VIEW) is None and answer(b"\x12\x34", VIEW) is None
    reply = DNSRecord.question("backend").reply().pack()           # a response, QR set
    assert not is_query(reply) and answer(reply, VIEW) is None
    bad = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\xff"   # pointer out of range
    r = answer(bad, VIEW)
    assert r[:2] == b"\xab\xcd" and r[3] & 0x0F == 1 and r[2] & 0x80
    two = DNSRecord.question("backend")
    two.add_question(DNSRecord.question("frontend").q)
    assert answer(two.pack(), VIEW)[3] & 0x0F == 1                  # FORMERR for 2 questions
    notify = bytearray(DNSRecord.question("backend").pack())
    notify[2] |= 4 << 3                                             # opcode NOTIFY
    assert answer(bytes(notify), VIEW)[3] & 0x0F == 4               # NOTIMP


def test_error_reply_shape():
    q = DNSRecord.question("x.example")
    r = DNSRecord.parse(error_reply(q.pack(), 2))
    assert r.header.id == q.header.id and r.header.rcode == 2 and r.header.rd == 1 and not r.questions


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    out = answer(data, VIEW)
    assert out is None or (len(out) >= 12 and out[:2] == data[:2])
    answer(data, VIEW, tcp=True)


QUERIES = [DNSRecord.question(n, t).pack() for n, t in
           (("backend", "A"), ("tasks.backend", "AAAA"), ("3.1.10.10.in-addr.arpa", "PTR"),
            ("example.com", "MX"), ("nope", "A"))]


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(QUERIES), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 80))
def test_mutated_queries_never_raise(query, flips, cut):
    data = bytearray(query)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[: len(data) - cut] if cut else data)
    out = answer(data, VIEW)
    assert out is None or out[:2] == data[:2]


def test_measure_qps(capsys):
    """Not a pass/fail figure: answers per second, cached (prebuilt reply) and uncached."""
    def qps(name: str, fresh: bool, n: int) -> float:
        wire = DNSRecord.question(name).pack()
        responder = Responder(VIEW)
        t0 = time.perf_counter()
        for _ in range(n):
            (Responder(VIEW) if fresh else responder).answer(wire)   # fresh: dnslib every time
        return n / (time.perf_counter() - t0)

    figures = {f"{name} {'uncached' if fresh else 'cached'}": qps(name, fresh, 1000 if fresh else 50000)
               for name in ("frontend", "backend", "example.com") for fresh in (False, True)}
    with capsys.disabled():
        print("\nanswer() q/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()))
