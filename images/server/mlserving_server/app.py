"""Wiring of one server process, its readiness, and the graceful stop on SIGTERM/SIGINT.

Graceful stop, within `drain_seconds`: stop being ready, unsubscribe (the broker then sends new
requests to the other replicas), keep answering what already arrived, wait until the broker
acknowledged those answers, disconnect. A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from mlserving_common import protocol
from mlserving_common.broker_registry import BrokerLocation
from mlserving_common.logs import event
from mlserving_common.registries import open_registry
from mlserving_common.registry import Registry
from mlserving_server.config import ServerConfig
from mlserving_server.http import HttpServer
from mlserving_server.lifecycle import Lifecycle
from mlserving_server.metrics import Metrics
from mlserving_server.models import ModelStore
from mlserving_server.pipeline import Pipeline
from mlserving_server.runtime import ModelRuntime
from mlserving_server.transport import Transport

log = logging.getLogger("mlserving.app")
QUIET_SECONDS = 0.25  # no message for this long after unsubscribing = the broker has nothing more for us


def service_client_id(config: ServerConfig) -> str:
    """An unguessable client id owned by the server's broker login (the broker refuses others), so
    no tenant can take over the server's session; random per connection owner (server, registry)."""
    return protocol.owned_client_id(config.broker.username or "mlserving")


def open_server_registry(config: ServerConfig) -> Registry:
    """The registry named by `registry`; the broker kind reuses this server's own broker login."""
    if config.registry.kind != "broker":
        return open_registry(config.registry.path)
    broker = config.broker
    location = BrokerLocation(
        host=broker.host,
        port=broker.port,
        prefix=config.topic_prefix,
        username=broker.username,
        tls=broker.tls.enabled,
        ca_file=broker.tls.ca_file,
        seed=config.registry.path,
        cache=config.registry.cache_dir,
    )
    return open_registry(location, client_id=service_client_id(config), password=broker.password)


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        client_id = service_client_id(config)
        self.registry = open_server_registry(config)
        self.store = ModelStore(
            config.model_versions(),
            self.registry,
            self.metrics,
            config.batching.max_batch,
            config.registry.poll_seconds,
            on_swap=self._on_swap,
            optional=config.shadow_versions(),
        )
        self.lifecycle = Lifecycle(
            config,
            self.metrics,
            shadow_runtime=self.store.get,
            roll_back=self.store.roll_back,
            pinned=self.store.pinned,
        )
        self.pipeline = Pipeline(config, self.store, self.metrics, self.lifecycle)
        self.transport = Transport(config, self.metrics, self.pipeline.admit, client_id=client_id)
        self.pipeline.transport = self.transport
        self.lifecycle.publish = self.transport.publish  # records and lifecycle events
        self.lifecycle.source = client_id
        self.http = HttpServer(config.http.host, config.http.port, self.readiness, self.metrics.render)
        batcher = self.pipeline.batcher
        self.metrics.track(pending=batcher.pending, inflight=batcher.inflight)
        self._draining = False
        self._stop = threading.Event()
        self._signals = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.store.refresh()  # load what is there now (before other threads); the poller retries the rest
        self.http.start()
        self.pipeline.batcher.start()
        self._subscribe_ready_tenants()
        self.transport.start()
        self.store.start()
        event(log, "server started", http_port=self.http.port, tenants=sorted(self.config.tenants))

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain; the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.start()
        while not self._stop.wait(1.0):
            pass
        self.shutdown()
        return 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            event(log, "second signal, exiting now", logging.WARNING, signal=signal.Signals(signum).name)
            os._exit(1)
        event(log, "stop requested", signal=signal.Signals(signum).name)
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        started = time.monotonic()
        deadline = started + self.config.drain_seconds
        self._draining = True
        self.metrics.ready.set(0)
        unsubscribed = self.transport.unsubscribe_all(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        batcher = self.pipeline.batcher
        while time.monotonic() < deadline:
            if (
                batcher.idle()
                and not self.transport.held()  # requests held back by flow control still get answers
                and time.monotonic() - self.transport.last_message > QUIET_SECONDS
            ):
                break
            time.sleep(0.01)
        finished = batcher.stop(timeout=max(0.0, deadline - time.monotonic()))
        while self.transport.unacked() > 0 and self.transport.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        unacked = self.transport.unacked()
        self.transport.stop()
        self.store.stop()
        self.registry.close()
        self.http.stop()
        event(
            log,
            "server stopped",
            seconds=round(time.monotonic() - started, 3),
            unsubscribed=unsubscribed,
            drained=finished,
            left_pending=batcher.pending(),
            left_unacked=unacked,
        )

    # -- readiness ---------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        subscribed = self.transport.subscribed()
        models = self.store.all_loaded()
        ready = not self._draining and self.transport.connected and models and subscribed == set(self.config.tenants)
        self.metrics.ready.set(1 if ready else 0)
        return ready, {
            "connected": self.transport.connected,
            "subscribed": sorted(subscribed),
            "models_loaded": models,
            "versions": self.store.serving_versions(),
            "draining": self._draining,
            "rolled_back": self.store.blocked(),
            "lifecycle": self.lifecycle.status(),
        }

    # -- model swaps -------------------------------------------------------------------------
    def _on_swap(
        self,
        model: str,
        spec: str,
        old: ModelRuntime | None,
        new: ModelRuntime,
        reason: str = "registry",
        tenant: str | None = None,
    ) -> None:
        self.lifecycle.on_swap(model, spec, old, new, reason, tenant)
        for name in self.lifecycle.swapped_tenants(model, spec, tenant):
            if old is not None and old.version != new.version:
                try:
                    self.metrics.model_info.remove(name, model, old.version)
                except KeyError:
                    pass
            self.metrics.model_info.labels(name, model, new.version).set(1)
            event(log, "tenant model", tenant=name, model=model, version=new.version)
        self._subscribe_ready_tenants()

    def _subscribe_ready_tenants(self) -> None:
        """A tenant is subscribed only once all its models serve, so a starting replica
        does not take shared traffic it can only answer with errors."""
        if self._draining:
            return
        ready = [
            name
            for name, tenant in self.config.tenants.items()
            if all(self.store.loaded(model, spec) for model, spec in tenant.models.items())
        ]
        self.transport.subscribe(ready)
