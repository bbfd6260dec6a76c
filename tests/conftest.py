"""Shared fixtures: a real Mosquitto with per-tenant ACLs, real trained models, real server processes.

Fixtures
- `broker`: a LocalBroker on a free loopback port with users tenant-a, tenant-b, server, trainer
  (see broker_support.BrokerHandle). Function-scoped: each test gets a fresh broker.
- `model_registry` (session): a filesystem registry holding v1 of the demo models (lstm, ann),
  trained by our own training code and cached under /var/cache/ml-serving/test-models/<hash>.
- `registry_root`: a private, writable copy of that registry for one test (promote, corrupt, ...).
- `server_process`: factory starting `python -m mlserving_server` subprocesses against `broker`
  (mlserving_bench.procs, which the benchmark starts its servers with too).
- `mqtt_client`: factory of small MQTT clients (mqtt_support.MqttTestClient) logged in as a tenant.
- `server`, `connect`: one server on the demo registry, and a factory of library Clients of it.

The helpers behind them live in broker_support, model_support and mqtt_support (tests/) and in
mlserving_bench.procs; this file holds only fixtures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlserving_bench.procs import Child, start_server, wait_until
from mlserving_client import Client
from mlserving_common.mosquitto import LocalBroker, TlsFiles, free_port, make_test_certificates, tenant_topics
from mlserving_common.registry import FilesystemRegistry

from broker_support import LEGACY_TENANT, LEGACY_TOPICS, TENANTS, BrokerHandle, make_broker_users, server_config
from model_support import ModelRegistry, demo_registry
from mqtt_support import MqttTestClient, run_load


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throw-away CA and broker certificate for 127.0.0.1/localhost."""
    return make_test_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path, tls_files: TlsFiles) -> Iterator[BrokerHandle]:
    """Plain listener on .port, TLS listener (same users) on .local.tls_port.

    Users: tenant-a, tenant-b (default topics), legacy (the tutorial's inqueue/lstm and
    outqueue/lstm), server, trainer. A test marked `broker_plugin_options(key=value)` gets the
    broker plugin with those options over the defaults.
    """
    topics = {tenant: tenant_topics(tenant) for tenant in TENANTS}
    topics[LEGACY_TENANT] = LEGACY_TOPICS
    users = make_broker_users(topics)
    marker = request.node.get_closest_marker("broker_plugin_options")
    options = marker.kwargs if marker else None
    with LocalBroker(users, workdir=tmp_path / "mosquitto", tls=tls_files, plugin_options=options) as local:
        yield BrokerHandle(local, {u.username: u for u in users}, topics)


@pytest.fixture(scope="session")
def model_registry() -> ModelRegistry:
    return demo_registry()


@pytest.fixture
def registry_root(model_registry: ModelRegistry, tmp_path: Path) -> Path:
    """A writable copy of the demo registry, private to one test."""
    target = tmp_path / "registry"
    shutil.copytree(model_registry.root, target, symlinks=True)
    return target


@pytest.fixture
def server_process(broker: BrokerHandle, tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Factory: server_process(registry=..., tenants=None, name=None, wait=True, **config_overrides).

    `registry` is the filesystem registry (the seed with registry_settings={"kind": "broker"});
    registry_settings adds to the config's `registry` section.
    """
    started: list[Child] = []

    def start(
        registry: Path,
        tenants: dict[str, dict[str, Any]] | None = None,
        name: str | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        registry_settings: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Child:
        name = name or f"server-{len(started) + 1}"
        config = server_config(broker, registry, free_port(), tenants, **overrides)
        config["registry"].update(registry_settings or {})
        full_env = {**os.environ, "MLSERVING_BROKER_PASSWORD": broker.users["server"].password, **(env or {})}
        server = start_server(name, config, tmp_path, full_env)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def mqtt_client(broker: BrokerHandle) -> Iterator[Callable[..., MqttTestClient]]:
    """Factory: mqtt_client(username, tenant=None, listen=True) -> MqttTestClient."""
    clients: list[MqttTestClient] = []

    def make(username: str, tenant: str | None = None, listen: bool = True) -> MqttTestClient:
        client = MqttTestClient(broker, username, tenant)
        clients.append(client)
        if listen:
            client.listen()
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def server(server_process: Callable[..., Child], model_registry: ModelRegistry) -> Child:
    """One real server on the demo registry (tenant-a -> lstm, tenant-b -> ann)."""
    return server_process(registry=model_registry.root)


@pytest.fixture
def connect(broker: BrokerHandle, server: Child) -> Iterator[Callable[..., Client]]:
    """Factory: connect(tenant="tenant-a", **Client kwargs) -> a library Client of `server`, closed after the test."""
    made: list[Client] = []

    def make(tenant: str = "tenant-a", **kwargs: Any) -> Client:
        made.append(Client(broker.host, broker.port, *broker.credentials(tenant), tenant, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def load() -> Callable[..., dict[str, Any]]:
    """The run_load helper as a fixture, so test modules need not import conftest."""
    return run_load


@pytest.fixture
def until() -> Callable[..., Any]:
    """The wait_until helper as a fixture."""
    return wait_until


@pytest.fixture
def publish_copy() -> Callable[..., str]:
    """publish_copy(registry_root, model, from_version="v1", promote=False) -> new version.

    Republishes an existing package as the next version, through the registry's own publish.
    """

    def publish(root: Path, model: str, from_version: str = "v1", promote: bool = False) -> str:
        registry = FilesystemRegistry(root)
        return registry.publish(registry.fetch(model, from_version), promote=promote)

    return publish
