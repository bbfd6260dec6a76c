"""Shared fixtures: a real Mosquitto with per-tenant ACLs, real trained models, real server processes.

Fixtures
- `broker`: a LocalBroker on a free loopback port with users tenant-a, tenant-b, server, trainer
  (see BrokerHandle). Function-scoped: each test gets a fresh broker.
- `model_registry` (session): a filesystem registry holding v1 of the demo models (lstm, ann),
  trained by our own training code and cached under /var/cache/ml-serving/test-models/<hash>.
- `registry_root`: a private, writable copy of that registry for one test (promote, corrupt, ...).
- `server_process`: factory starting `python -m mlserving_server` subprocesses against `broker`.
- `mqtt_client`: factory of small paho clients (MqttTestClient) logged in as a tenant.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from mlserving_common.devcache import cache_dir
import pytest
import yaml

from mlserving_common import protocol
from mlserving_common.mosquitto import (
    BrokerUser,
    LocalBroker,
    TlsFiles,
    free_port,
    make_test_certificates,
    server_acl,
    tenant_acl,
    tenant_topics,
    trainer_acl,
)

REPO = Path(__file__).resolve().parents[1]
TENANTS = ("tenant-a", "tenant-b")
#: Which demo model each test tenant is served by default.
TENANT_MODELS = {"tenant-a": "lstm", "tenant-b": "ann"}
#: A tenant with the original tutorial's fixed queue names.
LEGACY_TENANT = "legacy"
LEGACY_TOPICS = ("inqueue/lstm", "outqueue/lstm")
CACHE_ROOT = cache_dir() / "test-models"


# --------------------------------------------------------------------------------------------
# Broker
# --------------------------------------------------------------------------------------------


@dataclass
class BrokerHandle:
    """What tests need to know about the fixture broker: address, users, topics."""

    local: LocalBroker
    users: dict[str, BrokerUser]
    topics: dict[str, tuple[str, str]]  # tenant -> (request topic, response topic)
    prefix: str = protocol.DEFAULT_PREFIX

    @property
    def host(self) -> str:
        return self.local.host

    @property
    def port(self) -> int:
        return self.local.port

    def credentials(self, username: str) -> tuple[str, str]:
        return username, self.users[username].password

    def request_topic(self, tenant: str) -> str:
        return self.topics[tenant][0]

    def response_topic(self, tenant: str) -> str:
        return self.topics[tenant][1]

    def restart(self, down_seconds: float = 0.0) -> None:
        self.local.restart(down_seconds)


def make_broker_users(topics: dict[str, tuple[str, str]], prefix: str = protocol.DEFAULT_PREFIX) -> list[BrokerUser]:
    """Users for the given tenants plus `server` and `trainer`, with random passwords."""
    users = [BrokerUser(t, uuid.uuid4().hex, tenant_acl(*topics[t])) for t in topics]
    users.append(BrokerUser("server", uuid.uuid4().hex, server_acl(topics.values(), prefix=prefix), service=True))
    users.append(BrokerUser("trainer", uuid.uuid4().hex, trainer_acl(prefix), service=True))
    return users


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


# --------------------------------------------------------------------------------------------
# Models and registry
# --------------------------------------------------------------------------------------------


@dataclass
class ModelRegistry:
    """A filesystem registry with v1 of each demo model; treat as read-only (use registry_root)."""

    root: Path
    packages: dict[str, Path]


def _sources_hash() -> str:
    """Changes whenever the code that produces the test models changes."""
    digest = hashlib.sha256()
    roots = [REPO / "training" / "mlserving_training", REPO / "common" / "mlserving_common"]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts or path.name in ("mosquitto.py", "protocol.py", "logs.py"):
                continue
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build_demo_registry(out_root: Path) -> dict[str, Path]:
    """Train and publish v1 of each demo model with the project's own training code."""
    from mlserving_training.quick import build_demo_packages

    return {name: Path(path) for name, path in build_demo_packages(out_root).items()}


def _prune_cache(keep: Path, max_age_seconds: float = 86400.0) -> None:
    """Drop model caches of older training sources (not touched for a day) so the cache stays small."""
    now = time.time()
    for entry in CACHE_ROOT.iterdir():
        if entry == keep or not entry.is_dir():
            continue
        try:
            if now - entry.stat().st_mtime > max_age_seconds:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            pass


@pytest.fixture(scope="session")
def model_registry() -> ModelRegistry:
    cache = CACHE_ROOT / _sources_hash()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest run may be building the same models
        if not (cache / "DONE").exists():
            building = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_ROOT))
            try:
                packages = _build_demo_registry(building / "registry")
                (building / "packages.json").write_bytes(
                    orjson.dumps({k: str(Path(v).relative_to(building / "registry")) for k, v in packages.items()})
                )
                (building / "DONE").write_text("")
                shutil.rmtree(cache, ignore_errors=True)
                building.rename(cache)
            finally:
                shutil.rmtree(building, ignore_errors=True)
        _prune_cache(keep=cache)
    relative = orjson.loads((cache / "packages.json").read_bytes())
    root = cache / "registry"
    return ModelRegistry(root, {name: root / rel for name, rel in relative.items()})


@pytest.fixture
def registry_root(model_registry: ModelRegistry, tmp_path: Path) -> Path:
    """A writable copy of the demo registry, private to one test."""
    target = tmp_path / "registry"
    shutil.copytree(model_registry.root, target, symlinks=True)
    return target


# --------------------------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """One `python -m mlserving_server` subprocess and its HTTP endpoints."""

    name: str
    proc: subprocess.Popen
    http_port: int
    config_path: Path
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self, path: str) -> int | None:
        """HTTP status of GET path, or None while nothing listens."""
        try:
            return self.get(path, timeout=1.0)[0]
        except OSError:
            return None

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def is_ready(self) -> bool:
        try:
            return self.get("/readyz", timeout=1.0)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"server {self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def server_config(
    handle: BrokerHandle,
    registry: Path,
    http_port: int,
    tenants: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A server config (the chart's YAML shape) pointing at the fixture broker and registry."""
    if tenants is None:
        tenants = {tenant: {"models": {model: "current"}} for tenant, model in TENANT_MODELS.items()}
    config: dict[str, Any] = {
        "broker": {"host": handle.host, "port": handle.port, "username": "server", "keepalive": 10},
        "topic_prefix": handle.prefix,
        "share_group": protocol.DEFAULT_SHARE_GROUP,
        "qos": 1,
        "registry": {"path": str(registry), "poll_seconds": 0.2},
        "batching": {"max_batch": 64, "max_wait_ms": 2},
        "limits": {"max_payload_bytes": 262144, "max_instances": 1024, "max_pending": 20000},
        "http": {"host": "127.0.0.1", "port": http_port},
        "drain_seconds": 10,
        "log_level": "info",
        "tenants": tenants,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def server_process(broker: BrokerHandle, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: server_process(registry=..., tenants=None, name=None, wait=True, **config_overrides).

    `registry` is the filesystem registry (the seed with registry_settings={"kind": "broker"});
    registry_settings adds to the config's `registry` section.
    """
    started: list[ServerProcess] = []

    def start(
        registry: Path,
        tenants: dict[str, dict[str, Any]] | None = None,
        name: str | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        registry_settings: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> ServerProcess:
        name = name or f"server-{len(started) + 1}"
        http_port = free_port()
        config = server_config(broker, registry, http_port, tenants, **overrides)
        config["registry"].update(registry_settings or {})
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = tmp_path / f"{name}.log"
        full_env = {**os.environ, "MLSERVING_BROKER_PASSWORD": broker.users["server"].password, **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlserving_server", "--config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        server = ServerProcess(name, proc, http_port, config_path, log_path)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


# --------------------------------------------------------------------------------------------
# A plain paho test client (until/unless mlserving_client is used)
# --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    body: dict[str, Any]
    topic: str
    correlation: bytes | None
    received: float = field(default_factory=time.monotonic)


class MqttTestClient:
    """A tenant-side MQTT v5 client that records every answer by request id."""

    def __init__(
        self, broker: BrokerHandle, username: str, tenant: str | None = None, client_id: str | None = None
    ) -> None:
        """`client_id`: default an unguessable id owned by `username` (the broker refuses others)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.broker = broker
        self.tenant = tenant or username
        self.request_topic, self.response_topic = broker.topics.get(self.tenant, tenant_topics(self.tenant))
        self.answers: dict[str | None, list[Answer]] = defaultdict(list)
        self.all_answers: list[Answer] = []
        self._cond = threading.Condition()
        self.connected = threading.Event()
        self.sub_results: dict[int, list[int]] = {}
        self.pub_results: dict[int, int] = {}
        self.client_id = client_id or protocol.owned_client_id(username)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        self._client.username_pw_set(*broker.credentials(username))
        # 0 = no client-side inflight window: stock paho rescans all outgoing messages on every
        # PUBACK when a window is set, which made this test client slower than the server.
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(0.05, 1)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_socket_open = _nodelay
        self._subscriptions: list[str] = []
        self._client.connect_async(broker.host, broker.port, keepalive=10, clean_start=True)
        self._client.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError("test client could not connect")

    # -- paho callbacks ---------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            body = protocol.decode_response(message.payload)
        except ValueError:
            body = {"_raw": message.payload}
        correlation = getattr(message.properties, "CorrelationData", None) if message.properties else None
        answer = Answer(body, message.topic, correlation)
        with self._cond:
            self.answers[body.get("id")].append(answer)
            self.all_answers.append(answer)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self.sub_results[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.pub_results[mid] = reason_code.value
            self._cond.notify_all()

    # -- API --------------------------------------------------------------------------------
    def subscribe(self, topic: str, timeout: float = 5.0) -> list[int]:
        """Subscribe and return the SUBACK reason codes (>= 0x80 means refused)."""
        self._subscriptions.append(topic)
        _, mid = self._client.subscribe(topic, qos=1)
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self.sub_results, timeout):
                raise TimeoutError(f"no SUBACK for {topic}")
            return self.sub_results[mid]

    def listen(self) -> MqttTestClient:
        """Subscribe to the tenant's response topic and its subtopics (`x/#` matches `x` too)."""
        self.subscribe(self.response_topic + "/#")
        return self

    def publish_raw(
        self,
        payload: bytes,
        topic: str | None = None,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        qos: int = 1,
    ) -> int:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = None
        if response_topic is not None or correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        info = self._client.publish(topic or self.request_topic, payload, qos=qos, properties=properties)
        return info.mid

    def send(self, body: dict[str, Any], **kwargs: Any) -> int:
        return self.publish_raw(orjson.dumps(body), **kwargs)

    def publish_result(self, mid: int, timeout: float = 5.0) -> int:
        """PUBACK reason code of a QoS 1 publish (>= 0x80 means refused)."""
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self.pub_results, timeout):
                raise TimeoutError(f"no PUBACK for mid {mid}")
            return self.pub_results[mid]

    def wait_for(self, ids: list[str | None] | set[str | None], timeout: float = 20.0) -> bool:
        """Wait until every id has at least one answer."""
        pending = set(ids)
        with self._cond:
            return self._cond.wait_for(lambda: all(i in self.answers for i in pending), timeout)

    def wait_answers(self, count: int, timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.all_answers) >= count, timeout)

    def request(self, body: dict[str, Any], timeout: float = 20.0, **kwargs: Any) -> dict[str, Any]:
        """Send one request (an id is added if missing) and return its first answer."""
        body = dict(body)
        body.setdefault("id", uuid.uuid4().hex)
        self.send(body, **kwargs)
        if not self.wait_for([body["id"]], timeout):
            raise TimeoutError(f"no answer to {body['id']}")
        return self.answers[body["id"]][0].body

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    import socket

    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


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


def run_load(
    client: MqttTestClient,
    count: int,
    series: list[float],
    rate: float | None = None,
    retry_after: float | None = None,
    timeout: float = 60.0,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Send `count` requests (optionally paced), resend unanswered ones after `retry_after` s.

    Returns sent/answered/lost/errors/duplicates, `refused` (requests whose last PUBLISH the
    broker refused, PUBACK >= 0x80: an explicit error, not a loss) and the versions seen, in
    answer order.
    """
    ids = [f"load-{uuid.uuid4().hex[:12]}-{i}" for i in range(count)]
    sent_at: dict[str, float] = {}
    mids: dict[str, int] = {}

    def refused(request_id: str) -> bool:
        return client.pub_results.get(mids[request_id], 0) >= 0x80
    start = time.monotonic()
    for i, request_id in enumerate(ids):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        mids[request_id] = client.send({"id": request_id, "series": series})
        sent_at[request_id] = time.monotonic()
        if on_progress is not None:
            on_progress(i)
    deadline = time.monotonic() + timeout
    retries = 0
    while time.monotonic() < deadline:
        missing = [i for i in ids if i not in client.answers]
        if retry_after is None:
            missing = [i for i in missing if not refused(i)]
        if not missing:
            break
        if retry_after is not None:
            now = time.monotonic()
            for request_id in missing:
                if now - sent_at[request_id] > retry_after:
                    mids[request_id] = client.send({"id": request_id, "series": series})
                    sent_at[request_id] = now
                    retries += 1
        time.sleep(0.1)
    answered = [i for i in ids if i in client.answers]
    refusals = sum(1 for i in ids if i not in client.answers and refused(i))
    firsts = sorted((client.answers[i][0] for i in answered), key=lambda a: a.received)
    errors = [a.body for i in answered for a in client.answers[i] if "error" in a.body]
    return {
        "sent": count,
        "answered": len(answered),
        "lost": count - len(answered) - refusals,
        "refused": refusals,
        "errors": errors,
        "duplicates": sum(len(client.answers[i]) - 1 for i in answered),
        "retries": retries,
        "versions": [a.body.get("version") for a in firsts],
        "ids": ids,
    }


@pytest.fixture
def load() -> Callable[..., dict[str, Any]]:
    """The run_load helper as a fixture, so test modules need not import conftest."""
    return run_load


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until `condition()` is truthy; return its value, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def until() -> Callable[..., Any]:
    """The wait_until helper as a fixture."""
    return wait_until


@pytest.fixture
def publish_copy() -> Callable[..., str]:
    """publish_copy(registry_root, model, from_version="v1", promote=False) -> new version.

    Republishes an existing package as the next version, through the registry's own publish.
    """
    from mlserving_common.registry import FilesystemRegistry

    def publish(root: Path, model: str, from_version: str = "v1", promote: bool = False) -> str:
        registry = FilesystemRegistry(root)
        return registry.publish(registry.fetch(model, from_version), promote=promote)

    return publish
