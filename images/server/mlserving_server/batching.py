"""Micro-batching: requests that arrive together share one pass through the worker.

The MQTT network thread only appends to a deque; one worker thread takes up to `max_batch`
items at a time and hands them to the handler (parse, infer, answer). Under load the queue fills
while the worker is busy, so batches form by themselves; when the queue is short, the worker
waits until its oldest item is `max_wait_ms` old for companions. `max_pending` bounds the queue:
`submit` refuses beyond it so the caller can answer `overloaded` instead of dropping silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
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
        self._queue: deque[T] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._inflight = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- producer side (network thread) ------------------------------------------------------
    def submit(self, item: T) -> bool:
        """Queue an item; False when `max_pending` items are already waiting."""
        if len(self._queue) >= self.max_pending:
            return False
        self._queue.append(item)
        self._wake.set()
        return True

    # -- observers ---------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self._queue)

    def inflight(self) -> int:
        return self._inflight

    def idle(self) -> bool:
        """Nothing queued and nothing being processed."""
        return not self._queue and self._inflight == 0

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
        queue = self._queue
        while True:
            if not queue:
                if self._stopping:
                    return
                self._wake.clear()
                if not queue:  # re-check: submit may have appended before clear()
                    self._wake.wait(0.5)
                continue
            if self.max_wait > 0 and len(queue) < self.max_batch and not self._stopping:
                try:
                    waited = time.perf_counter() - queue[0][-1]  # type: ignore[index]
                except IndexError:
                    continue
                if waited < self.max_wait:
                    time.sleep(self.max_wait - waited)
            take = min(len(queue), self.max_batch)
            self._inflight = take  # before popping, so idle() never sees a gap
            batch = [queue.popleft() for _ in range(take)]
            try:
                self._handler(batch)
            except Exception:  # the handler answers per item; this is a last resort
                log.exception("batch handler failed")
            finally:
                self._inflight = 0
