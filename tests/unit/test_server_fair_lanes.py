"""Fair batching: one lane per tenant, a per-lane bound, and an equal share of every batch per busy lane."""

from __future__ import annotations

import threading
import time

from mlserving_server.batching import Batcher


def item(lane: str, n: int) -> tuple[str, int, float]:
    return (lane, n, time.perf_counter())


def held_batcher(max_batch: int, max_pending: int) -> tuple[Batcher, threading.Event, list[list[tuple]]]:
    """A batcher whose worker is held inside its first batch until the gate opens."""
    gate = threading.Event()
    batches: list[list[tuple]] = []

    def handler(batch):
        gate.wait(5)
        batches.append([(lane, n) for lane, n, _ in batch])

    batcher = Batcher(handler, max_batch=max_batch, max_wait_ms=0, max_pending=max_pending)
    batcher.start()
    batcher.submit(item("warm", 0), "warm")
    deadline = time.monotonic() + 5
    while batcher.pending() and time.monotonic() < deadline:  # the worker holds the first item
        time.sleep(0.001)
    return batcher, gate, batches


def test_a_quiet_lane_rides_in_the_next_batch_despite_a_flood():
    batcher, gate, batches = held_batcher(max_batch=8, max_pending=1000)
    for n in range(500):
        assert batcher.submit(item("a", n), "a")
    for n in range(3):
        assert batcher.submit(item("b", n), "b")
    gate.set()
    assert batcher.stop(timeout=10)
    first = batches[1]  # batches[0] is the warm-up item
    assert first[:3] == [("b", 0), ("b", 1), ("b", 2)]  # shortest lane first
    assert first[3:] == [("a", n) for n in range(5)]  # the rest of the room goes to the flood
    flat = [entry for batch in batches[1:] for entry in batch]
    assert [n for lane, n in flat if lane == "a"] == list(range(500))  # each lane stays in order, nothing lost
    assert max(len(b) for b in batches) <= 8


def test_two_busy_lanes_share_each_batch_equally():
    batcher, gate, batches = held_batcher(max_batch=8, max_pending=1000)
    for n in range(40):
        batcher.submit(item("a", n), "a")
        batcher.submit(item("b", n), "b")
    gate.set()
    assert batcher.stop(timeout=10)
    for batch in batches[1:-1]:
        lanes = [lane for lane, _ in batch]
        assert lanes.count("a") == lanes.count("b") == 4, batch


def test_the_queue_bound_is_per_lane_so_a_flood_cannot_refuse_others():
    batcher, gate, _ = held_batcher(max_batch=1, max_pending=3)
    assert [batcher.submit(item("a", n), "a") for n in range(5)] == [True, True, True, False, False]
    assert [batcher.submit(item("b", n), "b") for n in range(3)] == [True, True, True]
    assert batcher.pending() == 6
    gate.set()
    assert batcher.stop(timeout=5)
    assert batcher.idle() and batcher.pending() == 0
