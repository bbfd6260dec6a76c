"""Automatic rollback: a newly promoted version that serves worse than its predecessor is swapped back.

When a `current` pointer moves (a promotion, or a rollback by hand) the guard remembers the
predecessor's runtime and its pooled live MAE just before the swap (at least `min_scored`
forecasts; otherwise there is no baseline and nothing is guarded). Once the new version has
`min_scored` scored forecasts of its own, within `window_seconds` of the swap, it is compared:

    new MAE > predecessor MAE x (1 + margin)  ->  swap back locally, count, log, publish an event

The store then ignores the rejected version as `current` until the registry pointer moves on
(the server cannot write the registry: run `mlserving-train rollback` to move the pointer too).
Each replica decides on its own traffic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlserving_common.logs import event

from mlserving_server.config import AutoRollbackConfig
from mlserving_server.live import LiveScores
from mlserving_server.runtime import ModelRuntime

log = logging.getLogger("mlserving.rollback")
#: roll_back(model, spec, predecessor runtime, rejected version) -> True if it swapped
RollBack = Callable[[str, str, ModelRuntime, str], bool]
Notify = Callable[[str, dict[str, Any]], None]


@dataclass
class _Watch:
    model: str
    spec: str
    predecessor: ModelRuntime
    version: str
    baseline_mae: float
    baseline_count: int
    swapped_at: float  # monotonic
    swapped_wall: float
    count: int = 0
    total: float = 0.0


class RollbackGuard:
    def __init__(self, config: AutoRollbackConfig, scores: LiveScores, roll_back: RollBack, on_rollback: Notify) -> None:
        self.config = config
        self._scores = scores
        self._roll_back = roll_back
        self._on_rollback = on_rollback
        self._lock = threading.Lock()
        self._watching: dict[str, _Watch] = {}  # by model: only `current` specs are guarded
        self.decisions: list[dict[str, Any]] = []

    # -- poller thread -------------------------------------------------------------------------
    def on_swap(self, model: str, spec: str, old: ModelRuntime | None, new: ModelRuntime) -> None:
        """A registry-driven swap of `current`: start watching the new version if there is a baseline."""
        if not self.config.enabled or old is None or old.version == new.version:
            return
        pooled = self._scores.pooled_for(model, old.version)
        with self._lock:
            self._watching.pop(model, None)
        if pooled is None or pooled.count < self.config.min_scored or pooled.mae is None:
            event(log, "auto-rollback guard skipped", model=model, version=new.version, predecessor=old.version,
                  reason=f"predecessor has {pooled.count if pooled else 0} scored forecasts,"
                         f" fewer than min_scored={self.config.min_scored}")
            return
        watch = _Watch(model, spec, old, new.version, pooled.mae, pooled.count, time.monotonic(), time.time())
        with self._lock:
            self._watching[model] = watch
        event(log, "auto-rollback guard armed", model=model, version=new.version, predecessor=old.version,
              predecessor_live_mae=round(pooled.mae, 6), predecessor_scored=pooled.count,
              margin=self.config.margin, min_scored=self.config.min_scored, window_seconds=self.config.window_seconds)

    # -- worker thread -------------------------------------------------------------------------
    def on_score(self, model: str, version: str, error: float) -> None:
        watch = self._watching.get(model)
        if watch is None or watch.version != version:
            return
        with self._lock:
            if self._watching.get(model) is not watch:
                return
            watch.count += 1
            watch.total += error
            elapsed = time.monotonic() - watch.swapped_at
            if elapsed > self.config.window_seconds:
                del self._watching[model]
                self._record(watch, "expired", elapsed)
                return
            if watch.count < self.config.min_scored:
                return
            del self._watching[model]
        mae = watch.total / watch.count
        limit = watch.baseline_mae * (1.0 + self.config.margin)
        if mae <= limit:
            self._record(watch, "kept", elapsed, mae, limit)
            return
        started = time.perf_counter()
        swapped = self._roll_back(watch.model, watch.spec, watch.predecessor, watch.version)
        swap_seconds = time.perf_counter() - started
        self._record(watch, "rolled back" if swapped else "pointer already moved", elapsed, mae, limit, swap_seconds)

    def _record(
        self, watch: _Watch, decision: str, elapsed: float, mae: float | None = None, limit: float | None = None,
        swap_seconds: float | None = None,
    ) -> None:
        figures = {
            "model": watch.model, "version": watch.version, "predecessor": watch.predecessor.version,
            "decision": decision, "live_mae": None if mae is None else round(mae, 6),
            "predecessor_live_mae": round(watch.baseline_mae, 6), "limit": None if limit is None else round(limit, 6),
            "margin": self.config.margin, "scored": watch.count, "seconds_since_swap": round(elapsed, 3),
        }
        if swap_seconds is not None:
            figures["swap_back_seconds"] = round(swap_seconds, 6)
        self.decisions.append(figures)
        del self.decisions[:-50]
        level = logging.WARNING if decision == "rolled back" else logging.INFO
        event(log, "auto-rollback decision", level, **figures)
        if decision == "rolled back":
            self._on_rollback(watch.model, figures)

    def watching(self) -> dict[str, str]:
        with self._lock:
            return {model: w.version for model, w in self._watching.items()}
