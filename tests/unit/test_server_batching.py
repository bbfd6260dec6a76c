"""Micro-batching: batch bounds, arrival-time wait, bounded queue, one call per item, drain on stop."""

from __future__ import annotations

import threading
import time

from mlserving_server.batching import Batcher


def item(n: int) -> tuple[int, float]:
    return (n, time.perf_counter())


def test_items_queued_together_share_a_batch_bounded_by_max_batch():
    gate = threading.Event()
    batches: list[list[int]] = []

    def handler(batch):
        gate.wait(5)  # hold the worker so that the rest queues up behind the first item
        batches.append([n for n, _ in batch])

    batcher = Batcher(handler, max_batch=8, max_wait_ms=0, max_pending=1000)
    batcher.start()
    for n in range(21):
        assert batcher.submit(item(n))
    gate.set()
    assert batcher.stop(timeout=5)
    flat = [n for batch in batches for n in batch]
    assert flat == list(range(21))  # every item exactly once, in order
    assert max(len(b) for b in batches) <= 8
    assert len(batches) <= 5  # 1 + ceil(20 / 8) when the rest queued while the worker was held


def test_worker_waits_for_companions_up_to_max_wait():
    batches: list[int] = []
    done = threading.Event()

    def handler(batch):
        batches.append(len(batch))
        if sum(batches) == 3:
            done.set()

    batcher = Batcher(handler, max_batch=64, max_wait_ms=200, max_pending=1000)
    batcher.start()
    for n in range(3):
        batcher.submit(item(n))
        time.sleep(0.01)
    assert done.wait(5)
    batcher.stop(5)
    assert batches == [3]


def test_full_queue_refuses_instead_of_growing():
    gate = threading.Event()
    batcher = Batcher(lambda batch: gate.wait(5), max_batch=1, max_wait_ms=0, max_pending=3)
    batcher.start()
    batcher.submit(item(0))
    deadline = time.monotonic() + 5
    while batcher.pending() and time.monotonic() < deadline:  # worker took item 0 and is held
        time.sleep(0.001)
    accepted = [batcher.submit(item(n)) for n in range(1, 6)]
    assert accepted == [True, True, True, False, False]
    assert batcher.pending() == 3
    gate.set()
    assert batcher.stop(5)
    assert batcher.idle()


def test_handler_exception_does_not_stop_the_worker():
    seen: list[int] = []

    def handler(batch):
        seen.extend(n for n, _ in batch)
        if 0 in [n for n, _ in batch]:
            raise RuntimeError("boom")

    batcher = Batcher(handler, max_batch=1, max_wait_ms=0, max_pending=10)
    batcher.start()
    for n in range(3):
        batcher.submit(item(n))
    assert batcher.stop(5)
    assert seen == [0, 1, 2]


def test_stop_processes_everything_already_queued():
    processed: list[int] = []
    batcher = Batcher(lambda batch: processed.extend(n for n, _ in batch), max_batch=4, max_wait_ms=1, max_pending=100)
    for n in range(50):
        batcher.submit(item(n))
    batcher.start()
    assert batcher.stop(5)
    assert processed == list(range(50))
