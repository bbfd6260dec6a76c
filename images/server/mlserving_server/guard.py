"""Automatic rollback: a newly promoted version that serves a tenant worse than its predecessor is
swapped back for that tenant.

Everything is per (tenant, model): a model shared by tenants is judged per tenant, so one
tenant's traffic (crafted or not) can neither roll a version back for another tenant nor, by
raising a pooled baseline, keep a bad version for it. When a `current` pointer moves (a
promotion, or a rollback by hand) the guard remembers, for each tenant following it, the
predecessor's runtime and that tenant's live MAE of it just before the swap (at least
`min_scored` forecasts; otherwise there is no baseline and that tenant is not guarded). Once
the new version has `min_scored` scored forecasts of the tenant's own, within `window_seconds`
of the swap, it is compared:

    tenant's new MAE > tenant's predecessor MAE x (1 + margin)
        ->  pin that tenant back to the predecessor locally, count, log, publish an event

The other tenants keep the new version. The store serves the pinned tenant the predecessor
until the registry pointer moves on (the server cannot write the registry: run
`mlserving-train rollback` to move the pointer for everyone). Each replica decides on its own
traffic. Design: docs/lifecycle.md section 6.
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
#: roll_back(tenant, model, spec, predecessor runtime, rejected version) -> True if it swapped
RollBack = Callable[[str, str, str, ModelRuntime, str], bool]
#: on_rollback(figures): figures name tenant, model, version, predecessor and the MAEs
Notify = Callable[[dict[str, Any]], None]


@dataclass
class _Watch:
    tenant: str
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
    def __init__(
        self, config: AutoRollbackConfig, scores: LiveScores, roll_back: RollBack, on_rollback: Notify
    ) -> None:
        self.config = config
        self._scores = scores
        self._roll_back = roll_back
        self._on_rollback = on_rollback
        self._lock = threading.Lock()
        self._watching: dict[tuple[str, str], _Watch] = {}  # by (tenant, model): only `current` is guarded
        self.decisions: list[dict[str, Any]] = []

    # -- poller thread -------------------------------------------------------------------------
    def on_swap(self, tenant: str, model: str, spec: str, old: ModelRuntime | None, new: ModelRuntime) -> None:
        """A registry-driven swap of `current` for `tenant`: watch the new version if the tenant
        has a baseline of its own on the predecessor."""
        if not self.config.enabled or old is None or old.version == new.version:
            return
        baseline = self._scores.get(tenant, model, old.version)
        with self._lock:
            self._watching.pop((tenant, model), None)
        if baseline is None or baseline.count < self.config.min_scored or baseline.mae is None:
            event(
                log,
                "auto-rollback guard skipped",
                tenant=tenant,
                model=model,
                version=new.version,
                predecessor=old.version,
                reason=f"the tenant has {baseline.count if baseline else 0} scored forecasts of the predecessor,"
                f" fewer than min_scored={self.config.min_scored}",
            )
            return
        watch = _Watch(
            tenant, model, spec, old, new.version, baseline.mae, baseline.count, time.monotonic(), time.time()
        )
        with self._lock:
            self._watching[(tenant, model)] = watch
        event(
            log,
            "auto-rollback guard armed",
            tenant=tenant,
            model=model,
            version=new.version,
            predecessor=old.version,
            predecessor_live_mae=round(baseline.mae, 6),
            predecessor_scored=baseline.count,
            margin=self.config.margin,
            min_scored=self.config.min_scored,
            window_seconds=self.config.window_seconds,
        )

    # -- worker thread -------------------------------------------------------------------------
    def on_score(self, tenant: str, model: str, version: str, error: float) -> None:
        """One scored forecast of `tenant`'s: only that tenant's watch counts it."""
        key = (tenant, model)
        watch = self._watching.get(key)
        if watch is None or watch.version != version:
            return
        with self._lock:
            if self._watching.get(key) is not watch:
                return
            watch.count += 1
            watch.total += error
            elapsed = time.monotonic() - watch.swapped_at
            if elapsed > self.config.window_seconds:
                del self._watching[key]
                self._record(watch, "expired", elapsed)
                return
            if watch.count < self.config.min_scored:
                return
            del self._watching[key]
        mae = watch.total / watch.count
        limit = watch.baseline_mae * (1.0 + self.config.margin)
        if mae <= limit:
            self._record(watch, "kept", elapsed, mae, limit)
            return
        started = time.perf_counter()
        swapped = self._roll_back(watch.tenant, watch.model, watch.spec, watch.predecessor, watch.version)
        swap_seconds = time.perf_counter() - started
        self._record(watch, "rolled back" if swapped else "pointer already moved", elapsed, mae, limit, swap_seconds)

    def _record(
        self,
        watch: _Watch,
        decision: str,
        elapsed: float,
        mae: float | None = None,
        limit: float | None = None,
        swap_seconds: float | None = None,
    ) -> None:
        figures = {
            "tenant": watch.tenant,
            "model": watch.model,
            "version": watch.version,
            "predecessor": watch.predecessor.version,
            "decision": decision,
            "live_mae": None if mae is None else round(mae, 6),
            "predecessor_live_mae": round(watch.baseline_mae, 6),
            "limit": None if limit is None else round(limit, 6),
            "margin": self.config.margin,
            "scored": watch.count,
            "seconds_since_swap": round(elapsed, 3),
        }
        if swap_seconds is not None:
            figures["swap_back_seconds"] = round(swap_seconds, 6)
        self.decisions.append(figures)
        del self.decisions[:-50]
        level = logging.WARNING if decision == "rolled back" else logging.INFO
        event(log, "auto-rollback decision", level, **figures)
        if decision == "rolled back":
            self._on_rollback(figures)

    def watching(self) -> dict[str, str]:
        """`tenant/model` -> version being watched (for /readyz)."""
        with self._lock:
            return {f"{tenant}/{model}": w.version for (tenant, model), w in self._watching.items()}
