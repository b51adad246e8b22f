"""Hybrid logical clock: versions that follow wall time but never go backwards.

A version is one integer, milliseconds << 16 | counter, so it sorts like a number,
fits SQLite's INTEGER and stays readable (`version >> 16` is a Unix time in ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOGICAL_BITS = 16


class HLC:
    def __init__(self, clock: Callable[[], float] = time.time, last: int = 0) -> None:
        self._clock = clock
        self.last = last

    def now(self) -> int:
        """A version greater than every version this clock has issued or seen."""
        physical = int(self._clock() * 1000) << LOGICAL_BITS
        self.last = max(self.last + 1, physical)
        return self.last

    def observe(self, remote: int) -> None:
        """Move past a version seen from another node, so our next write sorts after it."""
        self.last = max(self.last, remote)


def wall_ms(version: int) -> int:
    return version >> LOGICAL_BITS
