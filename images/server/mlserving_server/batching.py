"""Micro-batching: requests that arrive together share one pass through the worker.

The MQTT network thread only appends to a deque; one worker thread takes up to `max_batch`
items at a time and hands them to the handler (parse, infer, answer). Under load the queue fills
while the worker is busy, so batches form by themselves; when the queue is short, the worker
waits until its oldest item is `max_wait_ms` old for companions. `max_pending` bounds the queue:
`submit` refuses beyond it so the caller can answer `overloaded` instead of dropping silently.

Fairness: items are queued per lane (the pipeline uses one lane per tenant), `max_pending` bounds
each lane, and a batch takes an equal share of its `max_batch` slots from every lane that has
items, shortest lane first. A tenant that floods its lane therefore fills only its own queue and
its own `overloaded` answers; another tenant's request waits for at most the batch in progress
plus its own, instead of queueing behind the whole flood (tests/integration/test_server_fairness.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger("mlserving.batching")
T = TypeVar("T")


class Batcher(Generic[T]):
    """Queue + single worker thread. Items must be sequences whose last element is the arrival time
    (time.perf_counter()), so the wait is measured from the oldest item's arrival."""

    def __init__(
        self,
        handler: Callable[[list[T]], None],
        max_batch: int,
        max_wait_ms: float,
        max_pending: int,
        name: str = "batcher",
    ) -> None:
        self._handler = handler
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_pending = max_pending
        self._lanes: dict[Hashable, deque[T]] = {}
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._inflight = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- producer side (network thread) ------------------------------------------------------
    def submit(self, item: T, lane: Hashable = None) -> bool:
        """Queue an item in its lane; False when `max_pending` items already wait in that lane."""
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes.setdefault(lane, deque())  # only this (network) thread adds lanes
        if len(queue) >= self.max_pending:
            return False
        queue.append(item)
        self._wake.set()
        return True

    # -- observers ---------------------------------------------------------------------------
    def _busy_lanes(self) -> list[deque[T]]:
        return [queue for queue in list(self._lanes.values()) if queue]  # list(): one atomic copy

    def pending(self) -> int:
        return sum(len(queue) for queue in list(self._lanes.values()))

    def inflight(self) -> int:
        return self._inflight

    def idle(self) -> bool:
        """Nothing queued and nothing being processed."""
        return self._inflight == 0 and not self._busy_lanes()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Process what is queued, then end the worker; True if it finished in time."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.005)
        return self.idle()

    # -- worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            lanes = self._busy_lanes()
            if not lanes:
                if self._stopping:
                    return
                self._wake.clear()
                if not self._busy_lanes():  # re-check: submit may have appended before clear()
                    self._wake.wait(0.5)
                continue
            if self.max_wait > 0 and sum(map(len, lanes)) < self.max_batch and not self._stopping:
                try:
                    oldest = min(queue[0][-1] for queue in lanes)  # type: ignore[index]
                except IndexError:
                    continue
                waited = time.perf_counter() - oldest
                if waited < self.max_wait:
                    time.sleep(self.max_wait - waited)
                    lanes = self._busy_lanes()
            batch = self._take(lanes)
            try:
                self._handler(batch)
            except Exception:  # the handler answers per item; this is a last resort
                log.exception("batch handler failed")
            finally:
                self._inflight = 0

    def _take(self, lanes: list[deque[T]]) -> list[T]:
        """Up to max_batch items: an equal share from each busy lane, shortest lane first, then
        whatever room is left, so a flooded lane cannot crowd the others out of a batch."""
        room = self.max_batch
        self._inflight = min(room, sum(map(len, lanes)))  # before popping, so idle() never sees a gap
        if len(lanes) == 1:
            queue = lanes[0]
            return [queue.popleft() for _ in range(min(len(queue), room))]
        lanes.sort(key=len)
        batch: list[T] = []
        share = max(1, room // len(lanes))
        for limit in (share, room):
            for queue in lanes:
                take = min(len(queue), limit, room - len(batch))
                batch.extend(queue.popleft() for _ in range(take))
        self._inflight = len(batch)
        return batch
