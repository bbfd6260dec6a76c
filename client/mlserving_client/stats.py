"""Counters and latency percentiles for the load generator, benchmarks and tests.

Latencies are kept as integer nanoseconds (time.perf_counter_ns) so recording one costs a
list append; sorting happens once, when a summary is asked for. Percentiles use the
nearest-rank definition: the value below which at least q % of the samples fall, always
an observed sample, so small runs give exact, testable answers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

NS_PER_MS = 1_000_000
PERCENTILES = (50.0, 95.0, 99.0)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values; q in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q: {q!r} must be within 0..100")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Latency distribution in milliseconds; all None when there were no samples."""

    count: int
    mean_ms: float | None = None
    min_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_ms": self.mean_ms,
            "min_ms": self.min_ms,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
        }


class LatencyRecorder:
    """Collects latency samples in ns; cheap to add to from a callback thread."""

    __slots__ = ("samples_ns",)

    def __init__(self) -> None:
        self.samples_ns: list[int] = []

    def add(self, latency_ns: int) -> None:
        self.samples_ns.append(latency_ns)

    def extend(self, other: LatencyRecorder) -> None:
        self.samples_ns.extend(other.samples_ns)

    def __len__(self) -> int:
        return len(self.samples_ns)

    def summary(self) -> LatencySummary:
        return summarize_ns(self.samples_ns)


def summarize_ns(samples_ns: Iterable[int]) -> LatencySummary:
    """Summarise nanosecond samples into a millisecond LatencySummary."""
    ordered = sorted(samples_ns)
    if not ordered:
        return LatencySummary(count=0)
    p50, p95, p99 = (percentile(ordered, q) / NS_PER_MS for q in PERCENTILES)
    return LatencySummary(
        count=len(ordered),
        mean_ms=sum(ordered) / len(ordered) / NS_PER_MS,
        min_ms=ordered[0] / NS_PER_MS,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=ordered[-1] / NS_PER_MS,
    )


@dataclass
class Counters:
    """Outcome of a set of requests. Invariant once a run is over: sent == answered + errors + lost.

    answered: successful answers; errors: error answers by code, and requests the broker refused
    (`refused_by_broker`, a PUBACK reason code >= 0x80); lost: no answer within the
    grace period; duplicates: further answers to a request already answered; unexpected:
    answers that match no request we sent.
    """

    sent: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    @property
    def replied(self) -> int:
        """Requests that got any answer, success or error."""
        return self.answered + self.error_total

    def merge(self, other: Counters) -> None:
        self.sent += other.sent
        self.answered += other.answered
        self.errors.update(other.errors)
        self.lost += other.lost
        self.duplicates += other.duplicates
        self.unexpected += other.unexpected

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "errors": dict(sorted(self.errors.items())),
            "error_total": self.error_total,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
        }


def rate(count: int, seconds: float) -> float:
    """Events per second, 0 for an empty interval."""
    return count / seconds if seconds > 0 else 0.0
