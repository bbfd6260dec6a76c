"""The batcher bounds each lane by payload bytes too: a flood of large requests cannot hold more
memory than `limits.max_pending_bytes`, whatever `max_pending` allows (issue 13, finding 3)."""

from __future__ import annotations

import threading
import time

from mlserving_server.batching import Batcher


def test_a_lane_refuses_beyond_its_byte_bound_and_frees_bytes_once_taken() -> None:
    gate = threading.Event()
    taken: list[list[tuple[str, float]]] = []

    def handler(batch: list[tuple[str, float]]) -> None:
        taken.append(batch)
        gate.wait(10)

    batcher = Batcher(handler, max_batch=2, max_wait_ms=0, max_pending=100, max_pending_bytes=1000)
    now = time.perf_counter()
    assert batcher.submit(("a0", now), "a", 600)  # taken by the worker at once, once started
    batcher.start()
    deadline = time.monotonic() + 10
    while not taken and time.monotonic() < deadline:
        time.sleep(0.005)
    assert taken == [[("a0", now)]] and batcher.lane_bytes("a") == 0
    # The worker is busy (gate closed): the lane now holds what is submitted.
    assert batcher.submit(("a1", now), "a", 600)
    assert not batcher.submit(("a2", now), "a", 600)  # 1200 > 1000 bytes: refused
    assert batcher.submit(("a3", now), "a", 400)  # 1000 bytes: fits exactly
    assert batcher.lane_bytes("a") == 1000
    assert batcher.submit(("b1", now), "b", 900)  # lanes are bounded apart
    gate.set()
    assert batcher.wait_idle(10)
    assert batcher.lane_bytes("a") == 0 and batcher.lane_bytes("b") == 0
    assert batcher.submit(("a4", now), "a", 1000)
    assert batcher.stop(10)


def test_an_empty_lane_takes_one_item_whatever_its_size() -> None:
    batcher = Batcher(lambda batch: None, max_batch=4, max_wait_ms=0, max_pending=10, max_pending_bytes=100)
    assert batcher.submit(("big", time.perf_counter()), "a", 500)
    assert not batcher.submit(("next", time.perf_counter()), "a", 1)
