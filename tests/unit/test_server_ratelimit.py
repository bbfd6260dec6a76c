"""Token bucket behind the per-tenant `rate_limited` answers (driven by a fake clock, no sleeps)."""

from __future__ import annotations

from mlserving_server.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_zero_rate_is_unlimited():
    bucket = TokenBucket(0, 0)
    assert bucket.unlimited
    assert all(bucket.take() for _ in range(100_000))


def test_burst_then_steady_rate():
    clock = Clock()
    bucket = TokenBucket(10, 5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.11  # one token back (a little more: float time)
    assert bucket.take() and not bucket.take()
    clock.now += 10  # refills to the burst, not beyond
    assert sum(bucket.take() for _ in range(20)) == 5


def test_zero_burst_with_rate_allows_one_second_worth():
    clock = Clock()
    bucket = TokenBucket(50, 0, clock=clock)
    assert sum(bucket.take() for _ in range(100)) == 50


def test_long_run_admits_rate_times_duration():
    clock = Clock()
    bucket = TokenBucket(100, 10, clock=clock)
    admitted = 0
    for _ in range(10_000):  # 1,000 attempts per second for 10 s
        clock.now += 0.001
        admitted += bucket.take()
    assert 1000 <= admitted <= 1010
