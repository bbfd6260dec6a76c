"""The soak's memory verdict: the RSS slope over the second half of the run."""

from __future__ import annotations

from mlserving_bench.soak import build_parser, rss_verdict


def test_flat_memory_after_a_warm_up_is_flat():
    samples = [(t, 60.0 + min(t, 100) * 0.2) for t in range(0, 1800, 5)]  # grows 20 MB, then stays
    slope, growth, flat = rss_verdict(samples)
    assert flat and abs(growth) < 0.5 and abs(slope) < 1.0


def test_steady_growth_is_not_flat():
    samples = [(t, 60.0 + t * 0.01) for t in range(0, 1800, 5)]  # 36 MB/h
    slope, growth, flat = rss_verdict(samples)
    assert not flat and 35 < slope < 37 and 8 < growth < 10


def test_too_few_samples_are_no_verdict():
    assert rss_verdict([(0.0, 60.0), (5.0, 60.0)])[2] is False


def test_defaults_are_thirty_minutes_at_half_saturation_with_promotions_every_five():
    args = build_parser().parse_args([])
    assert (args.minutes, args.load, args.promote_every) == (30.0, 0.5, 5.0)
