"""Per-tenant token bucket: a tenant flooding its queue gets `rate_limited` answers, not our capacity."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; rate 0 means unlimited.

    Not thread-safe on purpose: only the MQTT network thread takes tokens.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        # A burst of 0 with a positive rate would refuse everything; allow one second's worth.
        self.burst = float(burst) if burst > 0 else max(1.0, self.rate)
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def take(self, count: float = 1.0) -> bool:
        """Take `count` tokens if available."""
        if self.rate <= 0:
            return True
        now = self._clock()
        tokens = self._tokens + (now - self._last) * self.rate
        self._last = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= count:
            self._tokens = tokens - count
            return True
        self._tokens = tokens
        return False
