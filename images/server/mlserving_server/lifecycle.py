"""Model lifecycle in the server: live accuracy, drift, shadow versions, records, auto-rollback.

The batching worker calls `after_batch` once per inference group, after the answers were
published, so none of this adds to a request's latency or can change an answer: shadow
forecasts are computed here and only scored. Anything failing in here is logged and skipped.
Design and figures: docs/lifecycle.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from mlserving_common import protocol
from mlserving_common.logs import event
from mlserving_common.protocol import Request
from mlserving_server.config import CURRENT, ServerConfig, TenantConfig
from mlserving_server.drift import InputWindow, reference_mae, signal_payload
from mlserving_server.guard import RollbackGuard
from mlserving_server.live import SERVING, SHADOW, Forecast, LiveScores, MaeWindow, ScoreKey, SeriesTracker
from mlserving_server.metrics import Metrics
from mlserving_server.runtime import ModelRuntime

log = logging.getLogger("mlserving.lifecycle")
Publish = Callable[[str, bytes], None]
#: What after_batch needs of each answered request: tenant config, the request, its first row,
#: and when it arrived (time.perf_counter()).
Entry = tuple[TenantConfig, Request, int, float]
ERROR, INPUT = "error", "input"


class Lifecycle:
    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        shadow_runtime: Callable[[str, str], ModelRuntime | None],
        roll_back: Callable[[str, str, str, ModelRuntime, str], bool],
        pinned: Callable[[str, str, str], ModelRuntime | None] = lambda tenant, model, spec: None,
    ) -> None:
        self.config = config
        self.settings = config.lifecycle
        self.metrics = metrics
        self._shadow_runtime = shadow_runtime
        #: pinned(tenant, model, spec): the runtime an auto-rollback pinned the tenant to, if any
        self._pinned = pinned
        self.publish: Publish | None = None  # set once the transport exists
        self.source = ""  # this server's MQTT client id, named in its records
        self._seq = 0
        self.scores = LiveScores(self.settings.live_accuracy.window)
        self.tracker = SeriesTracker(self.scores, self.settings.live_accuracy.max_series, self._on_score)
        self.guard = RollbackGuard(self.settings.auto_rollback, self.scores, roll_back, self._on_rollback)
        self._inputs: dict[tuple[str, str, str], InputWindow | None] = {}
        #: raw windows not yet binned, per (tenant, model, version), and how many values they hold
        self._buffered: dict[tuple[str, str, str], tuple[list[np.ndarray], int]] = {}
        self._chunk = max(64, self.settings.drift.input_window // 20)
        self._flags: dict[tuple[str, str, str, str], bool] = {}
        self._references: dict[tuple[str, str], float | None] = {}
        self._children: dict[ScoreKey, tuple[Any, Any]] = {}
        self._reported: set[tuple[str, ...]] = set()
        self._touched: set[tuple[str, str, str]] = set()
        self.live_enabled = self.settings.live_accuracy.enabled
        self.drift_enabled = self.settings.drift.enabled
        #: Anything to do after a batch at all (else the pipeline skips the call).
        self.active = (
            self.live_enabled or self.drift_enabled or any(t.shadow or t.record for t in config.tenants.values())
        )

    # -- worker thread -----------------------------------------------------------------------
    def after_batch(
        self, runtime: ModelRuntime, entries: Sequence[Entry], windows: np.ndarray, forecasts: np.ndarray
    ) -> None:
        """Shadow inference, input drift, live scoring, records and error drift for one answered group."""
        try:
            self._after_batch(runtime, entries, windows, forecasts)
        except Exception:  # noqa: BLE001 - never let bookkeeping break serving
            self._once(
                ("after_batch", runtime.name, runtime.version),
                "lifecycle step failed",
                logging.ERROR,
                exc_info=True,
                model=runtime.name,
                version=runtime.version,
            )

    def _after_batch(
        self, runtime: ModelRuntime, entries: Sequence[Entry], windows: np.ndarray, forecasts: np.ndarray
    ) -> None:
        model, version = runtime.name, runtime.version
        scalar = runtime.output_size == 1
        shadows = self._run_shadows(runtime, entries, windows) if scalar else {}
        if self.drift_enabled:
            self._track_inputs(runtime, entries, windows)
        self._touched.clear()
        for tenant, request, first, arrived in entries:
            if request.normalized:
                continue
            if request.series_id is not None:
                if tenant.record and self.publish is not None:
                    self._record(tenant, request, model, arrived)
                if self.live_enabled and scalar:
                    for offset, window in enumerate(request.instances):
                        row = first + offset
                        value = float(forecasts[row, 0])
                        if not np.isfinite(value):  # answered with an error: nothing to score
                            continue
                        made: list[Forecast] = [(SERVING, version, value)]
                        shadow = shadows.get(row)
                        if shadow is not None:
                            made.append(shadow)
                        self.tracker.observe(tenant.name, request.series_id, model, window, made)
                    self._touched.add((tenant.name, model, version))
        if self.drift_enabled:
            for tenant_name, m, v in self._touched:
                self._check_error_drift(tenant_name, m, v, runtime)

    def _run_shadows(self, runtime: ModelRuntime, entries: Sequence[Entry], windows: np.ndarray) -> dict[int, Forecast]:
        """Row -> (shadow, version, forecast) for rows of tenants with a shadow of this model."""
        rows_by_spec: dict[str, list[int]] = {}
        for tenant, request, first, _ in entries:
            spec = tenant.shadow.get(runtime.name)
            if spec is None or request.normalized or request.series_id is None:
                continue
            rows_by_spec.setdefault(spec, []).extend(range(first, first + len(request.instances)))
        out: dict[int, Forecast] = {}
        for spec, rows in rows_by_spec.items():
            shadow = self._shadow_runtime(runtime.name, spec)
            if shadow is None:
                self._once(
                    ("shadow-missing", runtime.name, spec),
                    "shadow version not loaded",
                    logging.WARNING,
                    model=runtime.name,
                    spec=spec,
                )
                continue
            if shadow.window != runtime.window or shadow.output_size != 1 or shadow.calendar:
                # A calendar shadow would need the requests' times, which shadows are not given.
                self._once(
                    ("shadow-shape", runtime.name, shadow.version),
                    "shadow version skipped",
                    logging.WARNING,
                    model=runtime.name,
                    version=shadow.version,
                    reason=f"window {shadow.window} / outputs {shadow.output_size} / calendar"
                    f" {list(shadow.calendar)} differ from the serving version",
                )
                continue
            try:
                predicted = shadow.predict(np.ascontiguousarray(windows[rows]))
            except Exception as exc:  # noqa: BLE001 - a broken shadow costs its scores, never an answer
                self._once(
                    ("shadow-failed", runtime.name, shadow.version),
                    "shadow inference failed",
                    logging.ERROR,
                    model=runtime.name,
                    version=shadow.version,
                    reason=str(exc),
                )
                continue
            for row, value in zip(rows, predicted[:, 0].tolist(), strict=True):
                if np.isfinite(value):
                    out[row] = (SHADOW, shadow.version, value)
        return out

    def _track_inputs(self, runtime: ModelRuntime, entries: Sequence[Entry], windows: np.ndarray) -> None:
        """Buffer the group's raw windows per tenant; bin them in chunks (numpy per call costs more than the work)."""
        rows_by_tenant: dict[str, list[int]] = {}
        for tenant, request, first, _ in entries:
            if not request.normalized:
                rows_by_tenant.setdefault(tenant.name, []).extend(range(first, first + len(request.instances)))
        drift = self.settings.drift
        for tenant_name, rows in rows_by_tenant.items():
            key = (tenant_name, runtime.name, runtime.version)
            if key not in self._inputs:
                self._inputs[key] = InputWindow.for_metadata(runtime.metadata, drift.input_window)
                self._buffered[key] = ([], 0)
            window = self._inputs[key]
            if window is None:
                continue
            chunks, count = self._buffered[key]
            chunks.append(windows if len(rows) == len(windows) else windows[rows])  # usually one tenant per group
            count += len(rows) * runtime.window
            if count < self._chunk:
                self._buffered[key] = (chunks, count)
                continue
            self._buffered[key] = ([], 0)
            window.add((np.concatenate(chunks) - runtime.mean) * runtime.inv_std)
            if window.full and window.since_check >= max(1, drift.input_window // 10):
                psi = window.psi()
                self.metrics.input_psi.labels(*key).set(psi)
                self._set_flag(
                    key,
                    INPUT,
                    psi > drift.psi_threshold,
                    psi=psi,
                    threshold=drift.psi_threshold,
                    values=drift.input_window,
                )

    def _record(self, tenant: TenantConfig, request: Request, model: str, arrived: float) -> None:
        """Named by server and running number: the trainer chains each server's windows in that order."""
        assert self.publish is not None and request.series_id is not None
        topic = protocol.records_topic(tenant.name, request.series_id, self.config.topic_prefix)
        received = time.time() - (time.perf_counter() - arrived)
        self._seq += 1
        self.publish(
            topic,
            protocol.encode_record(
                tenant.name, request.series_id, model, list(request.instances), received, self.source, self._seq
            ),
        )
        self.metrics.records_child(tenant.name).inc()

    def _on_score(self, key: ScoreKey, error: float, mae: MaeWindow) -> None:
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.metrics.live_mae.labels(*key), self.metrics.live_scored.labels(*key))
        gauge, counter = children
        value = mae.mae
        assert value is not None  # called right after an error was added to the window
        gauge.set(value)
        counter.inc()
        if key[3] == SERVING:
            self.guard.on_score(key[0], key[1], key[2], error)

    def _check_error_drift(self, tenant: str, model: str, version: str, runtime: ModelRuntime) -> None:
        drift = self.settings.drift
        window = self.scores.get(tenant, model, version)
        if window is None or window.count < drift.min_scored or window.mae is None:
            return
        ref_key = (model, version)
        if ref_key not in self._references:
            self._references[ref_key] = reference_mae(runtime.metadata)
        reference = self._references[ref_key]
        if reference is None:
            return
        limit = drift.error_factor * reference
        self._set_flag(
            (tenant, model, version),
            ERROR,
            window.mae > limit,
            live_mae=window.mae,
            reference_mae=reference,
            factor=drift.error_factor,
            limit=limit,
            scored=window.count,
        )

    def _set_flag(self, key: tuple[str, str, str], kind: str, on: bool, **figures: Any) -> None:
        flag_key = (*key, kind)
        if self._flags.get(flag_key) == on:
            return
        first = flag_key not in self._flags
        self._flags[flag_key] = on
        self.metrics.drift.labels(*key, kind).set(1 if on else 0)
        if first and not on:
            return
        tenant, model, version = key
        payload = signal_payload(
            tenant=tenant,
            model=model,
            version=version,
            kind=kind,
            drift=1 if on else 0,
            at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **figures,
        )
        event(log, "drift detected" if on else "drift cleared", logging.WARNING if on else logging.INFO, **payload)
        if self.settings.drift.publish_events and self.publish is not None:
            self.publish(protocol.events_topic("drift", self.config.topic_prefix), orjson.dumps(payload))

    def _on_rollback(self, figures: dict[str, Any]) -> None:
        self.metrics.auto_rollbacks.labels(figures["tenant"], figures["model"], figures["version"]).inc()
        if self.publish is not None:
            self.publish(protocol.events_topic("rollback", self.config.topic_prefix), orjson.dumps(figures))

    # -- poller thread -----------------------------------------------------------------------
    def swapped_tenants(self, model: str, spec: str, tenant: str | None = None) -> list[str]:
        """Tenants whose serving runtime a swap of (model, spec) changed: `tenant` alone for a
        per-tenant swap (an auto-rollback pin, or its lifting), else every tenant on the spec
        that no auto-rollback pins (a pinned tenant keeps its predecessor)."""
        if tenant is not None:
            return [tenant]
        return [
            name
            for name, t in self.config.tenants.items()
            if t.models.get(model) == spec and self._pinned(name, model, spec) is None
        ]

    def on_swap(
        self, model: str, spec: str, old: ModelRuntime | None, new: ModelRuntime, reason: str, tenant: str | None = None
    ) -> None:
        """A version change of (model, spec) for the tenants it reaches: guard `current`
        promotions per tenant; retire their stale drift gauges."""
        for name in self.swapped_tenants(model, spec, tenant):
            if reason == "registry" and spec == CURRENT:
                self.guard.on_swap(name, model, spec, old, new)
            if old is None or old.version == new.version:
                continue
            for kind in (ERROR, INPUT):
                self._flags.pop((name, model, old.version, kind), None)
                _remove(self.metrics.drift, name, model, old.version, kind)
            _remove(self.metrics.input_psi, name, model, old.version)
            self._inputs.pop((name, model, old.version), None)
            self._buffered.pop((name, model, old.version), None)

    # -- helpers -----------------------------------------------------------------------------
    def _once(self, key: tuple[str, ...], message: str, level: int, exc_info: bool = False, **fields: Any) -> None:
        if key in self._reported:
            return
        self._reported.add(key)
        log.log(level, message, exc_info=exc_info, extra={"fields": fields})

    def status(self) -> dict[str, Any]:
        """For /readyz's body: what is being watched, scored and flagged."""
        return {
            "live_series": len(self.tracker),
            # list(): one C-level copy, so the worker inserting meanwhile cannot break the iteration
            "drift": sorted("/".join(k) for k, on in list(self._flags.items()) if on),
            "rollback_guard": self.guard.watching(),
        }


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
