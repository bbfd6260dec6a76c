"""Micro-batching: requests that arrive together share one pass through the worker.

The MQTT network thread only appends to a deque; one worker thread takes up to `max_batch`
items at a time and hands them to the handler (parse, infer, answer). Under load the queue fills
while the worker is busy, so batches form by themselves; when the queue is short, the worker
waits until its oldest item is `max_wait_ms` old for companions. `max_pending` (items) and
`max_pending_bytes` (the sizes callers give, i.e. payload bytes) bound each lane: `submit` refuses
beyond either so the caller can answer `overloaded` instead of dropping silently, and a flood of
large requests cannot hold more memory than configured.

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
        max_pending_bytes: int = 0,
    ) -> None:
        self._handler = handler
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes  # 0: no byte bound
        self._lanes: dict[Hashable, deque[T]] = {}
        # Byte accounting without a lock: per lane, the sizes in queue order, bytes added (written
        # by the producer only) and bytes taken (written by the worker only).
        self._sizes: dict[Hashable, deque[int]] = {}
        self._added: dict[Hashable, int] = {}
        self._taken: dict[Hashable, int] = {}
        self._lane_of: dict[int, Hashable] = {}  # id(queue) -> lane
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._inflight = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- producer side (network thread) ------------------------------------------------------
    def submit(self, item: T, lane: Hashable = None, size: int = 0) -> bool:
        """Queue an item in its lane; False when `max_pending` items, or with this one more than
        `max_pending_bytes` of size, already wait in that lane."""
        queue = self._lanes.get(lane)
        if queue is None:  # only this (network) thread adds lanes
            self._sizes[lane], self._added[lane], self._taken[lane] = deque(), 0, 0
            queue = self._lanes.setdefault(lane, deque())
            self._lane_of[id(queue)] = lane
        if len(queue) >= self.max_pending:
            return False
        if self.max_pending_bytes and queue and self.lane_bytes(lane) + size > self.max_pending_bytes:
            return False  # an empty lane always takes one item, so no single item is refused forever
        self._sizes[lane].append(size)  # before the item: the worker pops both in this order
        self._added[lane] += size
        queue.append(item)
        self._wake.set()
        return True

    def lane_bytes(self, lane: Hashable = None) -> int:
        """Sizes of the items waiting in a lane."""
        return self._added.get(lane, 0) - self._taken.get(lane, 0)

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
            return self._pop(queue, min(len(queue), room))
        lanes.sort(key=len)
        batch: list[T] = []
        share = max(1, room // len(lanes))
        for limit in (share, room):
            for queue in lanes:
                take = min(len(queue), limit, room - len(batch))
                batch.extend(self._pop(queue, take))
        self._inflight = len(batch)
        return batch

    def _pop(self, queue: deque[T], count: int) -> list[T]:
        """`count` items from the front of a lane, releasing their bytes."""
        lane = self._lane_of[id(queue)]
        sizes = self._sizes[lane]
        items = [queue.popleft() for _ in range(count)]
        self._taken[lane] += sum(sizes.popleft() for _ in range(count))
        return items
