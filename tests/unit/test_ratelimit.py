"""Join rate limiting: a burst, then the refill rate; sources are independent and bounded."""

from meshnet.ratelimit import RateLimit


def test_burst_then_refill():
    rl = RateLimit(burst=3, per_second=1)
    assert [rl.allow("a", 0.0) for _ in range(3)] == [0, 0, 0]
    assert rl.allow("a", 0.0) == 1.0  # empty: wait a second
    assert rl.allow("a", 0.5) == 0.5  # a refused attempt does not cost a token
    assert rl.allow("a", 1.0) == 0
    assert rl.allow("b", 1.0) == 0  # another source has its own bucket


def test_memory_is_bounded():
    rl = RateLimit(burst=1, per_second=0.001, max_sources=100)
    for i in range(1000):
        rl.allow(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(rl._buckets) == 100
    assert rl.allow("10.0.3.231", 0.0) > 0  # a recent source is still limited
