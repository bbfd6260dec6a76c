"""The tests' MQTT clients (on mlserving_common.mqtt, MQTT v5) and a paced load over them.

- MqttTestClient: a tenant that records every answer by request id (fixture `mqtt_client`).
- RawClient / connect_as / connect_to: one bare connection with the options hostile tests need
  (any client id, persistent sessions, any password or port), every message it receives kept.

Fixtures hand these out (tests/conftest.py: `mqtt_client`, `load`); a module of its own so the
conftest stays fixtures only.
"""

from __future__ import annotations

import itertools
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from mlserving_common import mqtt, protocol
from mlserving_common.mosquitto import tenant_topics

from broker_support import BrokerHandle

if TYPE_CHECKING:  # the bench is not needed to import this module
    from mlserving_bench.procs import Child
    from mlserving_bench.stack import Stack


class BrokerAddress(Protocol):
    """What a connection needs of a broker: BrokerHandle and LocalBroker both have it."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    def credentials(self, username: str) -> tuple[str, str]: ...


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
        self.broker = broker
        self.tenant = tenant or username
        self.request_topic, self.response_topic = broker.topics.get(self.tenant, tenant_topics(self.tenant))
        self.answers: dict[str | None, list[Answer]] = defaultdict(list)
        self.all_answers: list[Answer] = []
        self._cond = threading.Condition()
        self.client_id = client_id or protocol.owned_client_id(username)
        self._subscriptions: list[str] = []
        self._deliveries: dict[int, mqtt.Delivery] = {}
        self._mids = itertools.count(1)
        user, password = broker.credentials(username)
        options = mqtt.ConnectOptions(
            broker.host,
            broker.port,
            client_id=self.client_id,
            username=user,
            password=password,
            keepalive=10,
            reconnect=mqtt.Backoff(0.05, 1),
        )
        self._conn = mqtt.Connection(options, on_connect=self._on_connect, on_message=self._on_message)
        self._conn.start()
        if not self._conn.wait_connected(10):
            self._conn.close()
            raise TimeoutError("test client could not connect")

    def _on_connect(self, ack: mqtt.ConnAck) -> None:
        if self._subscriptions:  # after a reconnect: the broker forgot them (clean start)
            self._conn.subscribe(list(self._subscriptions), qos=1)

    def _on_message(self, message: mqtt.Message) -> None:
        try:
            body = protocol.decode_response(message.payload)
        except ValueError:
            body = {"_raw": message.payload}
        answer = Answer(body, message.topic, message.correlation_data)
        with self._cond:
            self.answers[body.get("id")].append(answer)
            self.all_answers.append(answer)
            self._cond.notify_all()

    def subscribe(self, topic: str, timeout: float = 5.0) -> list[int]:
        """Subscribe and return the SUBACK reason codes (>= 0x80 means refused)."""
        self._subscriptions.append(topic)
        try:
            return self._conn.subscribe(topic, qos=1).wait(timeout)
        except TimeoutError:
            raise TimeoutError(f"no SUBACK for {topic}") from None

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
        """Publish; the returned number names it for publish_result() and refused()."""
        delivery = self._conn.publish(
            topic or self.request_topic, payload, qos, response_topic=response_topic, correlation_data=correlation
        )
        mid = next(self._mids)
        self._deliveries[mid] = delivery
        return mid

    def send(self, body: dict[str, Any], **kwargs: Any) -> int:
        return self.publish_raw(orjson.dumps(body), **kwargs)

    def publish_result(self, mid: int, timeout: float = 5.0) -> int:
        """PUBACK reason code of a QoS 1 publish (>= 0x80 means refused)."""
        try:
            return self._deliveries[mid].wait(timeout)
        except TimeoutError:
            raise TimeoutError(f"no PUBACK for mid {mid}") from None

    def refused(self, mid: int) -> bool:
        """The broker answered this publish with a failure PUBACK (not: no answer yet)."""
        return self._deliveries[mid].refused

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
        self._conn.close()


class RawClient:
    """One bare connection, no retries: what a hostile or unusual client sends, every message kept.

    `reason_code` is the CONNACK's (0 accepted, >= 0x80 refused); a refused client is closed and
    only good for that code. `connection` is the mqtt.Connection for publish/subscribe.
    """

    def __init__(
        self,
        options: mqtt.ConnectOptions,
        timeout: float = 10.0,
        on_message: Callable[[mqtt.Message], None] | None = None,
    ) -> None:
        self.messages: list[mqtt.Message] = []
        self._cond = threading.Condition()
        self._on_message_hook = on_message
        self.connection = mqtt.Connection(options, on_message=self._on_message)
        self.connack: mqtt.ConnAck | None = None
        try:
            self.connack = self.connection.connect(timeout)
            self.reason_code = 0
        except mqtt.ConnectRefused as exc:
            self.reason_code = exc.reason_code
            self.connection.close()
        except BaseException:
            self.connection.close()
            raise

    @property
    def refused(self) -> bool:
        return self.reason_code >= mqtt.REFUSED

    def _on_message(self, message: mqtt.Message) -> None:
        if self._on_message_hook is not None:
            self._on_message_hook(message)
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self.messages]

    def wait_messages(self, count: int, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.messages) >= count, timeout)

    def subscribe(self, topic: str | mqtt.TopicFilter, qos: int = 1, timeout: float = 10.0) -> list[int]:
        """SUBACK reason codes, one per filter."""
        return self.connection.subscribe(topic, qos).wait(timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 10.0, **kwargs: Any) -> int:
        """Publish and wait for its PUBACK code (QoS 0: 0 once written)."""
        return self.connection.publish(topic, payload, qos, **kwargs).wait(timeout)

    def close(self) -> None:
        self.connection.close()


def connect_as(
    broker: BrokerAddress,
    username: str,
    client_id: str = "",
    *,
    password: str | None = None,
    port: int | None = None,
    **options: Any,
) -> RawClient:
    """Connect once as `username` (its own password unless `password`; the broker's port unless
    `port`, e.g. its TLS port); `options` as for connect_to."""
    secret = password if password is not None else broker.credentials(username)[1]
    return connect_to(broker.host, port or broker.port, username, secret, client_id, **options)


def connect_to(
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    client_id: str = "",
    *,
    clean_start: bool = True,
    session_expiry: int = 0,
    keepalive: int = 10,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
    on_message: Callable[[mqtt.Message], None] | None = None,
) -> RawClient:
    """Connect once with exactly these options."""
    options = mqtt.ConnectOptions(
        host,
        port,
        client_id=client_id,
        username=username,
        password=password,
        clean_start=clean_start,
        session_expiry=session_expiry,
        keepalive=keepalive,
        ssl_context=ssl_context,
        connect_timeout=timeout,
    )
    return RawClient(options, timeout, on_message)


def client_cli(
    host: str,
    port: int,
    command: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m mlserving_client COMMAND --host HOST --port PORT ARGS` in its own process, as a
    user would; `env` on top of ours (e.g. MLSERVING_CLIENT_PASSWORD)."""
    return subprocess.run(
        [sys.executable, "-m", "mlserving_client", command, "--host", host, "--port", str(port), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def assert_answers_every_request_and_stops(stack: Stack, child: Child, tenant: str) -> None:
    """A bench responder under 256 requests in flight for a second answers each one exactly once,
    then exits cleanly when stopped: what makes its figures comparable with ours."""
    counters = stack.load(tenant=tenant, concurrency=256, duration=1.0, grace=20.0).counters
    assert counters.sent > 256
    assert (counters.answered, counters.lost, counters.error_total, counters.duplicates) == (counters.sent, 0, 0, 0)
    assert child.alive()
    stack.stop(child)
    assert child.proc.returncode == 0, child.log_tail()


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
        return client.refused(mids[request_id])

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
