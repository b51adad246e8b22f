from __future__ import annotations

import itertools

from meshnet.hlc import HLC, LOGICAL_BITS, wall_ms


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_follows_wall_time():
    clock = FakeClock(1_700_000_000.0)
    hlc = HLC(clock)
    v = hlc.now()
    assert wall_ms(v) == 1_700_000_000_000
    assert v & ((1 << LOGICAL_BITS) - 1) == 0
    clock.t += 5
    assert wall_ms(hlc.now()) == 1_700_000_005_000


def test_same_millisecond_counts_up():
    hlc = HLC(FakeClock(1000.0))
    versions = [hlc.now() for _ in range(5)]
    assert versions == sorted(set(versions))
    assert versions[-1] - versions[0] == 4
    assert {wall_ms(v) for v in versions} == {1_000_000}


def test_monotonic_when_clock_goes_backwards():
    clock = FakeClock(2000.0)
    hlc = HLC(clock)
    before = hlc.now()
    clock.t = 1000.0  # NTP step back by 1000 s
    after = [hlc.now() for _ in range(3)]
    assert before < after[0] < after[1] < after[2]
    clock.t = 3000.0
    assert wall_ms(hlc.now()) == 3_000_000


def test_strictly_increasing_over_a_jumpy_clock():
    times = [5.0, 5.0, 4.0, 6.5, 6.4999, 0.0, 7.0, 7.0, 3.0]
    clock = FakeClock(times[0])
    hlc = HLC(clock)
    out = []
    for t in times:
        clock.t = t
        out.append(hlc.now())
    assert all(a < b for a, b in itertools.pairwise(out))


def test_observe_moves_past_remote_versions():
    hlc = HLC(FakeClock(1000.0))
    remote = HLC(FakeClock(5000.0)).now()
    hlc.observe(remote)
    assert hlc.now() > remote


def test_observe_an_older_version_changes_nothing():
    hlc = HLC(FakeClock(1000.0))
    v = hlc.now()
    hlc.observe(v - 100)
    assert hlc.last == v
    assert hlc.now() == v + 1


def test_resumes_after_last_stored_version():
    stored = HLC(FakeClock(9000.0)).now()
    hlc = HLC(FakeClock(1000.0), last=stored)
    assert hlc.now() > stored
