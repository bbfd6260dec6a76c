"""Prometheus metrics of one server process (served on /metrics).

A private CollectorRegistry keeps several Metrics instances (unit tests) apart. Label children
are cached because `.labels()` costs more than the increment on the hot path.

Every label value is bounded by configuration, never by what a request says, so neither the
scrape nor the server's memory grows with hostile input: `tenant` comes from the config,
`model` from the tenant's configured models (a request naming any other model counts under
UNKNOWN_MODEL_LABEL), `version` from the registry's loaded versions (children of replaced
versions are removed where the lifecycle allows), `outcome` is "ok" or a protocol.ErrorCode, and
`role`/`kind` are fixed sets. No series id, request id or message text is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

#: `model` label of requests naming a model the tenant is not served (the name itself is the client's).
UNKNOWN_MODEL_LABEL = "_unknown"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "mlserving_requests",
            "Requests answered, by tenant, model, version and outcome (ok or an error code).",
            ["tenant", "model", "version", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "mlserving_request_latency_seconds",
            "Time from receipt of a request to the publication of its answer.",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mlserving_batch_size",
            "Series windows per model inference.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "mlserving_inference_seconds",
            "Duration of one batched model inference.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "mlserving_inflight_requests", "Requests taken by the worker, not yet answered.", registry=r
        )
        self.pending = Gauge("mlserving_pending_requests", "Requests received and waiting for the worker.", registry=r)
        self.held = Gauge(
            "mlserving_held_requests",
            "Requests received but not yet taken nor acknowledged,"
            " because limits.max_outgoing answers await the broker.",
            registry=r,
        )
        self.outgoing = Gauge(
            "mlserving_unacked_answers",
            "Answers handed to the MQTT client, not yet acknowledged by the broker.",
            registry=r,
        )
        self.model_load = Histogram(
            "mlserving_model_load_seconds",
            "Time to verify, load and warm up a model version.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.model_load_failures = Counter(
            "mlserving_model_load_failures",
            "Model versions refused (checksum, shapes, warm-up); the previous version keeps serving.",
            ["model", "version"],
            registry=r,
        )
        self.model_info = Gauge(
            "mlserving_model_info",
            "1 for the model version serving each tenant.",
            ["tenant", "model", "version"],
            registry=r,
        )
        self.model_swaps = Counter("mlserving_model_swaps", "Version changes per model.", ["model"], registry=r)
        self.broker_connected = Gauge("mlserving_broker_connected", "1 while connected to the broker.", registry=r)
        self.broker_connects = Counter("mlserving_broker_connects", "Successful broker (re)connections.", registry=r)
        self.subscribed = Gauge(
            "mlserving_subscribed_tenants", "Tenants whose request topic is subscribed.", registry=r
        )
        self.ready = Gauge("mlserving_ready", "1 when connected, subscribed and all models loaded.", registry=r)
        # Model lifecycle (docs/lifecycle.md)
        self.live_mae = Gauge(
            "mlserving_live_mae",
            "MAE (raw units) of the last N forecasts scored against the actual reading later requests revealed.",
            ["tenant", "model", "version", "role"],
            registry=r,
        )
        self.live_scored = Counter(
            "mlserving_live_scored",
            "Forecasts scored against their actual reading (role: serving or shadow).",
            ["tenant", "model", "version", "role"],
            registry=r,
        )
        self.drift = Gauge(
            "mlserving_drift",
            "1 while a drift signal is on:"
            " kind=error (live MAE above factor x test MAE) or input (PSI above threshold).",
            ["tenant", "model", "version", "kind"],
            registry=r,
        )
        self.input_psi = Gauge(
            "mlserving_input_psi",
            "Population stability index of the tenant's recent normalised inputs"
            " against the version's training inputs.",
            ["tenant", "model", "version"],
            registry=r,
        )
        self.auto_rollbacks = Counter(
            "mlserving_auto_rollbacks",
            "Newly promoted versions swapped back to their predecessor for one tenant"
            " because that tenant's live MAE was worse.",
            ["tenant", "model", "version"],
            registry=r,
        )
        self.records = Counter(
            "mlserving_records_published", "Live-traffic records published for retraining.", ["tenant"], registry=r
        )
        self._records_children: dict[str, Counter] = {}
        self._request_children: dict[tuple[str, str, str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._batch_children: dict[str, tuple[Histogram, Histogram]] = {}

    def request_counter(self, tenant: str, model: str, version: str, outcome: str) -> Counter:
        key = (tenant, model, version, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        return child

    def latency_for(self, tenant: str) -> Histogram:
        child = self._latency_children.get(tenant)
        if child is None:
            child = self._latency_children[tenant] = self.latency.labels(tenant)
        return child

    def batch_for(self, model: str) -> tuple[Histogram, Histogram]:
        """(batch-size histogram, inference-duration histogram) children of one model."""
        pair = self._batch_children.get(model)
        if pair is None:
            pair = self._batch_children[model] = (self.batch_size.labels(model), self.inference.labels(model))
        return pair

    def records_child(self, tenant: str) -> Counter:
        child = self._records_children.get(tenant)
        if child is None:
            child = self._records_children[tenant] = self.records.labels(tenant)
        return child

    def track(self, pending: Callable[[], float], inflight: Callable[[], float]) -> None:
        """Gauges computed at scrape time, so the hot path pays nothing for them."""
        self.pending.set_function(pending)
        self.inflight.set_function(inflight)

    def track_transport(self, held: Callable[[], float], outgoing: Callable[[], float]) -> None:
        """Flow-control gauges of the MQTT side, computed at scrape time."""
        self.held.set_function(held)
        self.outgoing.set_function(outgoing)

    def render(self) -> bytes:
        return generate_latest(self.registry)
