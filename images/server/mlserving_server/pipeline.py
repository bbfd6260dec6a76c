"""From an MQTT message to exactly one answer: admission, parsing, grouped inference, replies.

Two threads touch this module:
- the MQTT network thread runs `admit`: route check inputs, size limits (payload, Correlation
  Data), rate limit, queue bounds (count and bytes per tenant). It does no parsing beyond what a
  rejection needs, so the network loop never waits for a model; what it holds is bounded by
  configuration (docs/server.md, "Overload");
- the batching worker runs `process` on up to max_batch queued messages: parse each, group
  the valid ones by model runtime, run one inference per group, publish every answer.
Every path through both functions ends in exactly one `_answer` / `_fail` per message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mlserving_common import protocol
from mlserving_common.protocol import ErrorCode, ProtocolError, Request
from mlserving_server import legacy
from mlserving_server.batching import Batcher
from mlserving_server.config import ServerConfig, TenantConfig
from mlserving_server.lifecycle import Lifecycle
from mlserving_server.metrics import UNKNOWN_MODEL_LABEL, Metrics
from mlserving_server.models import ModelStore
from mlserving_server.ratelimit import TokenBucket
from mlserving_server.runtime import ModelRuntime
from mlserving_server.transport import Transport

log = logging.getLogger("mlserving.pipeline")
_perf = time.perf_counter


@dataclass(eq=False)
class Tenant:
    """A tenant's config plus its mutable serving state (rate-limit bucket, metric children)."""

    config: TenantConfig
    bucket: TokenBucket

    def __post_init__(self) -> None:
        self.name = self.config.name
        self.response_topic = self.config.response_topic
        self.response_namespace = self.config.response_topic + "/"
        self.models = self.config.models
        self.default_model = self.config.default_model

    def reply_topic(self, requested: str | None) -> str | None:
        """Where to answer: the request's Response Topic if inside our namespace, else None."""
        if requested is None:
            return self.response_topic
        if requested == self.response_topic or (
            requested.startswith(self.response_namespace) and "+" not in requested and "#" not in requested
        ):
            return requested
        return None


# A queued message: (tenant, payload, response topic, correlation data, arrival time).
Item = tuple[Tenant, bytes, "str | None", "bytes | None", float]


def _peek_id(payload: bytes, max_bytes: int) -> str | None:
    """The request id of a message we reject without parsing, so the client can still match it."""
    if len(payload) > max_bytes:
        return None
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict):
        rid = body.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= protocol.MAX_ID_LENGTH:
            return rid
    return None


class Pipeline:
    def __init__(
        self, config: ServerConfig, store: ModelStore, metrics: Metrics, lifecycle: Lifecycle | None = None
    ) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        self._lifecycle = lifecycle
        self._max_bytes = config.limits.max_payload_bytes
        self._max_correlation = config.limits.max_correlation_bytes
        self._max_instances = config.limits.max_instances
        self.tenants = {
            name: Tenant(t, TokenBucket(t.rate_limit.per_second, t.rate_limit.burst))
            for name, t in config.tenants.items()
        }
        self._by_topic = {t.config.request_topic: t for t in self.tenants.values()}
        self.batcher: Batcher[Item] = Batcher(
            self.process,
            config.batching.max_batch,
            config.batching.max_wait_ms,
            config.limits.max_pending,
            name="batch-worker",
            max_pending_bytes=config.limits.max_pending_bytes,
        )
        self.transport: Transport | None = None  # set by the app once created

    # -- network thread ----------------------------------------------------------------------
    def admit(self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        """Queue a request for the worker, or answer its rejection right away."""
        arrived = _perf()
        tenant = self._by_topic.get(topic)
        if tenant is None:
            log.warning("message on unexpected topic", extra={"fields": {"topic": topic}})
            return
        if correlation is not None and len(correlation) > self._max_correlation:
            # Never echoed: an answer carrying it would cost its size again at the broker and the client.
            item: Item = (tenant, payload, response_topic, None, arrived)
            self._reject(
                item,
                ErrorCode.INVALID_REQUEST,
                f"correlation data is {len(correlation)} bytes, limit is {self._max_correlation}",
            )
            return
        item = (tenant, payload, response_topic, correlation, arrived)
        if len(payload) > self._max_bytes:  # answered now: an oversize payload is never queued
            self._reject(
                item, ErrorCode.PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes, limit is {self._max_bytes}"
            )
        elif not tenant.bucket.take():
            self._reject(item, ErrorCode.RATE_LIMITED, f"tenant {tenant.name} is over its rate limit")
        elif not self.batcher.submit(item, tenant, len(payload)):  # one lane per tenant: fair batches
            self._reject(item, ErrorCode.OVERLOADED, "server queue is full, retry later")

    def _reject(self, item: Item, code: str, message: str) -> None:
        # Where the request asked (clients listen on their own subtopic only), unless outside the namespace.
        topic = item[0].reply_topic(item[2])
        self._fail(item, _peek_id(item[1], self._max_bytes), code, message, "", "", topic)

    # -- worker thread -----------------------------------------------------------------------
    def process(self, batch: list[Item]) -> None:
        """Answer every item of a batch; valid requests share one inference per model runtime."""
        groups: dict[ModelRuntime, list[tuple[Item, Request, str]]] = {}
        for item in batch:
            try:
                accepted = self._validate(item)
            except Exception as exc:  # a bug must cost one error answer, not the batch
                log.exception("request validation failed")
                self._fail(item, _peek_id(item[1], self._max_bytes), ErrorCode.INTERNAL, str(exc), "", "")
                continue
            if accepted is not None:
                runtime, request, topic = accepted
                groups.setdefault(runtime, []).append((item, request, topic))
        for runtime, entries in groups.items():
            self._infer(runtime, entries)

    def _validate(self, item: Item) -> tuple[ModelRuntime, Request, str] | None:
        tenant, payload, response_topic, _correlation, _ = item
        topic = tenant.reply_topic(response_topic)
        if topic is None:
            self._fail(
                item,
                _peek_id(payload, self._max_bytes),
                ErrorCode.INVALID_REQUEST,
                f"response topic {response_topic!r} is outside {tenant.response_topic!r} and its subtopics",
                "",
                "",
            )
            return None
        try:
            request = protocol.parse_request(payload, self._max_bytes, self._max_instances)
            if request.normalized:  # the tutorial's payload, in the client's own units
                request = legacy.to_readings(request, tenant.config.legacy, tenant.name)
        except ProtocolError as exc:
            self._fail(item, exc.request_id, exc.code, exc.message, "", "", topic)
            return None
        model = request.model or tenant.default_model
        spec = tenant.models.get(model)
        if spec is None:
            self._fail(
                item,
                request.id,
                ErrorCode.UNKNOWN_MODEL,
                f"model {model!r} is not served to tenant {tenant.name}; choose one of {sorted(tenant.models)}",
                UNKNOWN_MODEL_LABEL,  # the name is the client's: as a label value it would grow /metrics without bound
                "",
                topic,
            )
            return None
        runtime = self._store.get(model, spec, tenant.name)  # a tenant's auto-rollback pin wins
        if runtime is None:
            self._fail(
                item, request.id, ErrorCode.MODEL_UNAVAILABLE, f"model {model} is not loaded yet", model, "", topic
            )
            return None
        window = runtime.window
        for index, instance in enumerate(request.instances):
            if len(instance) != window:
                where = f"instances[{index}]" if request.batched else "series"
                self._fail(
                    item,
                    request.id,
                    ErrorCode.WRONG_WINDOW,
                    f"'{where}' has {len(instance)} values, model {model} {runtime.version} needs {window}",
                    model,
                    runtime.version,
                    topic,
                )
                return None
        if request.horizon is not None or runtime.calendar:
            problem = self._model_inputs_problem(request, runtime, model)
            if problem is not None:
                self._fail(item, request.id, ErrorCode.INVALID_REQUEST, problem, model, runtime.version, topic)
                return None
        return runtime, request, topic

    @staticmethod
    def _model_inputs_problem(request: Request, runtime: ModelRuntime, model: str) -> str | None:
        """Why a request cannot be served by a day-ahead or calendar model, or None."""
        if request.horizon is not None and request.horizon > runtime.horizon:
            return f"'horizon' {request.horizon} exceeds model {model} {runtime.version}'s horizon {runtime.horizon}"
        if runtime.calendar and request.times is None:
            key = "times' (one per instance)" if request.batched else "time'"
            return (
                f"model {model} {runtime.version} uses calendar inputs: give '{key}, the unix time in seconds"
                f" of the last reading (readings every {runtime.interval_s:g} s)"
            )
        return None

    def _infer(self, runtime: ModelRuntime, entries: list[tuple[Item, Request, str]]) -> None:
        try:
            rows = [instance for _, request, _ in entries for instance in request.instances]
            windows = np.array(rows, dtype=np.float32)
            sizes, timer = self._metrics.batch_for(runtime.name)
            started = _perf()
            last_times: list[float] | None = None
            if runtime.calendar:
                last_times = []
                for _, request, _ in entries:
                    assert request.times is not None  # _validate refuses calendar requests without times
                    last_times.extend(request.times)
            forecasts = runtime.predict(windows, last_times)
            timer.observe(_perf() - started)
            sizes.observe(len(rows))
            finite = np.isfinite(forecasts).all(axis=1)
            values: list[Any] = forecasts[:, 0].tolist()  # `prediction(s)`: the first step, whatever the horizon
        except Exception as exc:  # e.g. a poison input making the interpreter fail
            if len(entries) > 1:
                # Retry one by one so that only the request that causes the failure fails.
                for entry in entries:
                    self._infer(runtime, [entry])
                return
            log.exception("inference failed", extra={"fields": {"model": runtime.name, "version": runtime.version}})
            for item, request, topic in entries:
                self._fail(
                    item,
                    request.id,
                    ErrorCode.INTERNAL,
                    f"inference failed: {exc}",
                    runtime.name,
                    runtime.version,
                    topic,
                )
            return
        all_finite = bool(finite.all())
        position = 0
        for item, request, topic in entries:
            count = len(request.instances)
            if not all_finite and not finite[position : position + count].all():
                self._fail(
                    item,
                    request.id,
                    ErrorCode.INTERNAL,
                    "model produced a non-finite forecast",
                    runtime.name,
                    runtime.version,
                    topic,
                )
            else:
                answer = values[position : position + count]
                if request.normalized:
                    scaling = item[0].config.legacy
                    assert scaling is not None  # _validate refuses legacy requests of tenants without it
                    answer = legacy.to_client_units(answer, scaling)
                steps = None
                if request.horizon is not None:
                    steps = forecasts[position : position + count, : request.horizon].tolist()
                body = protocol.encode_prediction(request, answer, item[0].name, runtime.name, runtime.version, steps)
                self._send(item, topic, body, runtime.name, runtime.version, "ok")
            position += count
        if self._lifecycle is not None and self._lifecycle.active:
            # After the answers: shadow versions, live accuracy, drift and records never delay or change one.
            firsts, row = [], 0
            for item, request, _ in entries:
                firsts.append((item[0].config, request, row, item[4]))
                row += len(request.instances)
            self._lifecycle.after_batch(runtime, firsts, windows, forecasts)

    # -- answers -----------------------------------------------------------------------------
    def _fail(
        self,
        item: Item,
        request_id: str | None,
        code: str,
        message: str,
        model: str,
        version: str,
        topic: str | None = None,
    ) -> None:
        tenant = item[0]
        body = protocol.encode_error(request_id, code, message, tenant.name)
        self._send(item, topic or tenant.response_topic, body, model, version, code)

    def _send(self, item: Item, topic: str, body: bytes, model: str, version: str, outcome: str) -> None:
        tenant, _, _, correlation, arrived = item
        assert self.transport is not None
        self.transport.publish(topic, body, correlation)
        metrics = self._metrics
        metrics.request_counter(tenant.name, model, version, outcome).inc()
        metrics.latency_for(tenant.name).observe(_perf() - arrived)
