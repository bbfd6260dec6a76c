"""Latency percentiles and outcome counters of the load generator (mlserving_client.stats)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlserving_client.stats import Counters, LatencyRecorder, percentile, rate, summarize_ns


def test_nearest_rank_percentiles_on_1_to_100() -> None:
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (0, 1, 50, 95, 99, 100)] == [1, 1, 50, 95, 99, 100]


def test_percentile_of_small_samples_is_an_observed_value() -> None:
    assert percentile([7], 50) == 7
    assert percentile([1, 2], 50) == 1
    assert percentile([1, 2], 51) == 2
    assert percentile([1, 2, 3, 4], 99) == 4


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q"):
        percentile([1], 101)


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=300))
def test_percentiles_are_ordered_and_bounded(samples: list[int]) -> None:
    ordered = sorted(samples)
    p = [percentile(ordered, q) for q in (0, 50, 95, 99, 100)]
    assert p == sorted(p)
    assert p[0] == ordered[0] and p[-1] == ordered[-1]
    assert all(v in samples for v in p)


def test_summary_converts_ns_to_ms() -> None:
    recorder = LatencyRecorder()
    for ms in [5, 1, 3, 2, 4]:
        recorder.add(ms * 1_000_000)
    s = recorder.summary()
    assert (s.count, s.min_ms, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms, s.mean_ms) == (5, 1, 3, 5, 5, 5, 3)
    assert s.to_dict()["p99_ms"] == 5


def test_empty_summary_has_no_numbers() -> None:
    s = summarize_ns([])
    assert s.count == 0 and s.p50_ms is None and s.max_ms is None


def test_recorders_merge() -> None:
    a, b = LatencyRecorder(), LatencyRecorder()
    a.add(1_000_000)
    b.add(3_000_000)
    a.extend(b)
    assert len(a) == 2 and a.summary().max_ms == 3


def test_counters_merge_and_totals() -> None:
    a = Counters(sent=10, answered=7, errors=Counter({"overloaded": 2}), lost=1, duplicates=1)
    b = Counters(sent=6, answered=4, errors=Counter({"overloaded": 1, "internal": 1}), unexpected=2)
    a.merge(b)
    assert (a.sent, a.answered, a.error_total, a.replied, a.lost, a.duplicates, a.unexpected) == (
        16,
        11,
        4,
        15,
        1,
        1,
        2,
    )
    assert a.to_dict()["errors"] == {"internal": 1, "overloaded": 3}
    assert a.sent == a.answered + a.error_total + a.lost


def test_rate_of_an_empty_interval_is_zero() -> None:
    assert rate(10, 0) == 0.0
    assert rate(10, 2.0) == 5.0
