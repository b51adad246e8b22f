"""Per-source token buckets (pure; the caller passes `now`), for the join listener."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RateLimit:
    burst: float = 10.0  # requests a source may make at once
    per_second: float = 1.0  # and then, on average
    max_sources: int = 4096  # bounded memory: the oldest sources are forgotten first
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, source: str, now: float) -> float:
        """0 when the request may go ahead (and is counted), else seconds to wait."""
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_second)
        if tokens >= 1:
            self._buckets[source] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[source] = (tokens, now)
            wait = (1 - tokens) / self.per_second
        while len(self._buckets) > self.max_sources:
            del self._buckets[next(iter(self._buckets))]
        return wait
