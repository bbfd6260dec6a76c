"""The client library and the load generator against a tiny responder on a real Mosquitto.

The responder plays the server's part of the wire contract (answer on the request's Response
Topic with its Correlation Data, bodies from mlserving_common.protocol) and can misbehave on
purpose: drop a first attempt, answer it late, answer with an error, drop every n-th request.
That makes retries, duplicate suppression and loss accounting observable without depending
on the real server; test_client_server.py covers the real one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mlserving_client import Client, LoadSpec, PredictionError, PredictionTimeout, TenantTarget, run_load, transport
from mlserving_common import mqtt, protocol
from mlserving_common.mosquitto import DEFAULT_LIMITS

TENANT = "tenant-a"


class EchoResponder:
    """Answers each request with its series' last value; `policy(request_id, nth_time_seen)` decides.

    The policy returns "answer", "drop", ("error", code), ("late", seconds) or ("twice",).
    """

    def __init__(
        self,
        broker: Any,
        tenants: tuple[str, ...] = ("tenant-a", "tenant-b"),
        policy: Callable[[str | None, int], Any] | None = None,
    ) -> None:
        self.policy = policy or (lambda rid, n: "answer")
        self.seen: Counter[str | None] = Counter()
        self.received = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._topics = [broker.request_topic(t) for t in tenants]
        self.subscribed = threading.Event()
        options = transport.connect_options(
            broker.host, broker.port, transport.new_client_id("server", "echo"), *broker.credentials("server")
        )
        self._client = mqtt.Connection(options, on_connect=self._on_connect, on_message=self._on_message)
        self._client.start()
        assert self.subscribed.wait(10), "responder could not subscribe"

    def _on_connect(self, _connack: mqtt.ConnAck) -> None:
        self._client.subscribe(self._topics, qos=1, on_done=lambda _ack: self.subscribed.set())

    def _on_message(self, msg: mqtt.Message) -> None:
        try:
            request = protocol.parse_request(msg.payload, 1 << 20, 1024)
            body = protocol.encode_prediction(request, [s[-1] for s in request.instances], TENANT, "echo", "v0")
            rid = request.id
        except protocol.ProtocolError as exc:
            body, rid = protocol.encode_error(exc.request_id, exc.code, exc.message), exc.request_id
        with self._lock:
            self.received += 1
            self.seen[rid] += 1
            action = self.policy(rid, self.seen[rid])
        reply_to = msg.response_topic
        props = {"correlation_data": msg.correlation_data}
        if action == "drop":
            with self._lock:
                self.dropped += 1
            return
        if isinstance(action, tuple) and action[0] == "error":
            body = protocol.encode_error(rid, action[1], "injected by the test responder")
        if isinstance(action, tuple) and action[0] == "twice":
            self._client.publish(reply_to, body, 1, **props)
        if isinstance(action, tuple) and action[0] == "late":
            timer = threading.Timer(action[1], self._client.publish, (reply_to, body, 1), props)
            self._timers.append(timer)
            timer.start()
            return
        self._client.publish(reply_to, body, 1, **props)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._client.close()


@pytest.fixture
def responder(broker: Any) -> Iterator[Callable[..., EchoResponder]]:
    made: list[EchoResponder] = []

    def make(policy: Callable[[str | None, int], Any] | None = None) -> EchoResponder:
        made.append(EchoResponder(broker, policy=policy))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def client_factory(broker: Any) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(tenant: str = TENANT, **kwargs: Any) -> Client:
        user, password = broker.credentials(tenant)
        made.append(Client(broker.host, broker.port, user, password, tenant, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll for an event that must happen eventually (a wait, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_round_trip_single_and_batched(responder, client_factory) -> None:
    responder()
    client = client_factory()
    answer = client.predict([1.0, 2.0, 3.5], timeout=5)
    assert answer.value == 3.5
    assert (answer.model, answer.version, answer.tenant, answer.attempts) == ("echo", "v0", TENANT, 1)
    assert client.predict_batch([[1.0, 2.0], [3.0, 4.0], [5.0]], timeout=5) == [2.0, 4.0, 5.0]
    stats = client.stats()
    assert (stats.sent, stats.answered, stats.retries, stats.duplicates) == (2, 2, 0, 0)


def test_many_outstanding_futures(responder, client_factory) -> None:
    responder()
    client = client_factory()
    futures = [client.submit([float(i), float(i) + 0.5]) for i in range(500)]
    assert [f.result(timeout=30).value for f in futures] == [float(i) + 0.5 for i in range(500)]
    assert client.in_flight == 0


def test_retry_uses_same_id_and_ignores_the_duplicate(responder, client_factory) -> None:
    # The first attempt is answered only after the client has already resent it.
    echo = responder(lambda rid, n: ("late", 1.0) if n == 1 else "answer")
    client = client_factory(timeout=0.3, attempts=3, backoff=0.05)
    answer = client.predict([4.0, 2.0])
    assert answer.value == 2.0
    assert answer.attempts == 2
    assert echo.seen[answer.id] == 2  # both attempts carried the same id
    assert wait_until(lambda: client.stats().duplicates == 1)
    stats = client.stats()
    assert (stats.sent, stats.retries, stats.answered, stats.unexpected) == (1, 1, 1, 0)


def test_dropped_first_attempt_is_recovered(responder, client_factory) -> None:
    echo = responder(lambda rid, n: "drop" if n == 1 else "answer")
    client = client_factory(timeout=0.3, attempts=2, backoff=0.0)
    answer = client.predict([7.0])
    assert (answer.value, answer.attempts, echo.seen[answer.id], echo.dropped) == (7.0, 2, 2, 1)


def test_timeout_after_all_attempts(responder, client_factory) -> None:
    echo = responder(lambda rid, n: "drop")
    client = client_factory(timeout=0.2, attempts=3, backoff=0.01)
    with pytest.raises(PredictionTimeout) as caught:
        client.predict([1.0])
    assert caught.value.attempts == 3
    assert echo.seen[caught.value.request_id] == 3
    assert client.stats().timeouts == 1


def test_error_answer_raises_without_retry(responder, client_factory) -> None:
    echo = responder(lambda rid, n: ("error", protocol.ErrorCode.UNKNOWN_MODEL))
    client = client_factory(timeout=2, attempts=3, backoff=0.01)
    with pytest.raises(PredictionError) as caught:
        client.predict([1.0, 2.0], model="nope")
    assert caught.value.code == protocol.ErrorCode.UNKNOWN_MODEL
    assert not caught.value.retryable
    assert echo.seen[caught.value.request_id] == 1


def test_invalid_request_gets_the_servers_error(responder, client_factory) -> None:
    responder()
    client = client_factory()
    with pytest.raises(PredictionError) as caught:
        client.predict([])  # the responder validates with protocol.parse_request
    assert caught.value.code == protocol.ErrorCode.INVALID_REQUEST


def test_retryable_error_is_retried_with_same_id(responder, client_factory) -> None:
    echo = responder(lambda rid, n: ("error", protocol.ErrorCode.OVERLOADED) if n == 1 else "answer")
    client = client_factory(timeout=2, attempts=3, backoff=0.01)
    answer = client.predict([3.0])
    assert (answer.value, answer.attempts, echo.seen[answer.id]) == (3.0, 2, 2)
    assert client.stats().errors == Counter({protocol.ErrorCode.OVERLOADED: 1})


def test_retryable_error_surfaces_when_attempts_run_out(responder, client_factory) -> None:
    responder(lambda rid, n: ("error", protocol.ErrorCode.RATE_LIMITED))
    client = client_factory(timeout=2, attempts=2, backoff=0.01)
    with pytest.raises(PredictionError) as caught:
        client.predict([3.0])
    assert caught.value.code == protocol.ErrorCode.RATE_LIMITED and caught.value.retryable


def test_wrong_password_fails_fast(broker) -> None:
    with pytest.raises(ConnectionError, match="refused"):
        Client(broker.host, broker.port, TENANT, "wrong", TENANT, connect_timeout=10)


def test_survives_broker_restart(broker, responder, client_factory) -> None:
    responder()
    client = client_factory(timeout=1.0, attempts=10, backoff=0.1)
    assert client.predict([1.0]).value == 1.0
    broker.restart(down_seconds=0.5)
    assert client.predict([2.0]).value == 2.0  # retries bridge the reconnect
    assert client.stats().connects >= 2


def test_context_manager_closes(broker, responder) -> None:
    responder()
    user, password = broker.credentials(TENANT)
    with Client(broker.host, broker.port, user, password, TENANT) as client:
        assert client.predict([5.0]).value == 5.0
    with pytest.raises(RuntimeError, match="closed"):
        client.submit([1.0])


# -- load generator ---------------------------------------------------------------------------


def _spec(broker: Any, tenants: tuple[str, ...] = (TENANT,), **kwargs: Any) -> LoadSpec:
    targets = tuple(TenantTarget(t, *broker.credentials(t)) for t in tenants)
    defaults: dict[str, Any] = {"grace": 1.0, "request_timeout": 0.5}
    return LoadSpec(host=broker.host, port=broker.port, targets=targets, **{**defaults, **kwargs})


@pytest.mark.parametrize("engine", ["lean", "reconnect"])
def test_load_closed_loop_counts_every_answer(broker, responder, engine: str) -> None:
    responder()
    result = run_load(_spec(broker, concurrency=16, count=1000, engine=engine))
    assert result.engine == engine
    c = result.counters
    assert (c.sent, c.answered, c.error_total, c.lost, c.duplicates) == (1000, 1000, 0, 0, 0)
    assert result.latency.count == 1000
    assert result.latency.p50_ms <= result.latency.p99_ms <= result.latency.max_ms
    assert result.versions == {"echo:v0": 1000}


def test_load_closed_loop_beyond_the_brokers_receive_maximum(broker, responder) -> None:
    """More outstanding requests than the broker lets us have unacknowledged (its Receive Maximum,
    DEFAULT_LIMITS max_inflight_messages): the excess waits for PUBACKs instead of stalling the run."""
    responder()
    concurrency = 2 * int(DEFAULT_LIMITS["max_inflight_messages"])
    result = run_load(_spec(broker, concurrency=concurrency, count=5 * concurrency))
    c = result.counters
    assert (c.sent, c.answered, c.error_total, c.lost, c.duplicates) == (5 * concurrency, 5 * concurrency, 0, 0, 0)


@pytest.mark.parametrize("engine", ["lean", "reconnect"])
def test_load_counts_lost_requests(broker, responder, engine: str) -> None:
    def drop(rid, n):
        return "drop" if int(rid.rsplit("-", 1)[1]) % 10 == 3 else "answer"

    echo = responder(drop)
    result = run_load(_spec(broker, concurrency=20, count=500, engine=engine))
    c = result.counters
    assert echo.dropped == 50
    assert (c.sent, c.answered, c.lost, c.error_total) == (500, 450, 50, 0)


@pytest.mark.parametrize("engine", ["lean", "reconnect"])
def test_load_open_loop_errors(broker, responder, engine: str) -> None:
    def policy(rid: str, n: int) -> Any:
        seq = int(rid.rsplit("-", 1)[1])
        if seq % 7 == 0:
            return ("error", protocol.ErrorCode.OVERLOADED)
        return "answer"

    echo = responder(policy)
    result = run_load(_spec(broker, rate=500, count=300, engine=engine))
    c = result.counters
    errors = sum(1 for i in range(300) if i % 7 == 0)
    assert echo.received == 300
    assert (c.sent, c.answered, c.errors[protocol.ErrorCode.OVERLOADED], c.lost) == (300, 300 - errors, errors, 0)


def test_load_several_tenants_and_batches(broker, responder) -> None:
    responder()
    result = run_load(_spec(broker, tenants=("tenant-a", "tenant-b"), concurrency=8, count=400, batch=4))
    assert result.counters.answered == 400
    per_tenant = {t.tenant: t.counters.answered for t in result.tenants}
    assert sum(per_tenant.values()) == 400 and min(per_tenant.values()) > 0
    assert result.forecasts_per_second == pytest.approx(4 * result.throughput)


def test_load_counts_duplicate_answers(broker, responder) -> None:
    echo = responder(lambda rid, n: ("twice",))
    result = run_load(_spec(broker, concurrency=4, count=50))
    assert echo.received == 50
    c = result.counters
    assert (c.sent, c.answered, c.lost) == (50, 50, 0)
    # Answers on one connection arrive in order, so every duplicate but the very last one's arrives
    # before the run stops listening (right after the last first answer).
    assert c.duplicates >= 49 and c.unexpected == 0


def test_load_wrong_password_fails_fast(broker) -> None:
    spec = LoadSpec(
        host=broker.host, port=broker.port, targets=(TenantTarget(TENANT, TENANT, "wrong"),), rate=1, count=1
    )
    with pytest.raises(ConnectionError, match=TENANT):
        run_load(spec)


def test_load_refuses_unbounded_or_long_runs(broker) -> None:
    with pytest.raises(ValueError, match="duration"):
        run_load(_spec(broker, rate=10, duration=3601))
    with pytest.raises(ValueError, match="duration/count"):
        run_load(_spec(broker, rate=10))
    with pytest.raises(ValueError, match="rate/concurrency"):
        run_load(_spec(broker, rate=10, concurrency=2, count=1))


def test_load_reports_a_broken_connection(broker, responder) -> None:
    responder(lambda rid, n: "drop")  # nothing is answered, so requests are in flight when the broker dies
    outcome: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: outcome.setdefault("result", run_load(_spec(broker, rate=200, duration=3)))
    )
    runner.start()
    time.sleep(1.0)
    broker.local.kill()
    runner.join(60)
    result = outcome["result"]
    c = result.counters
    assert TENANT in result.failures
    assert c.sent > 0 and c.answered == 0 and c.lost == c.sent


def test_load_reconnect_engine_rides_out_a_broker_restart(broker, responder) -> None:
    """Engine reconnect: the lane comes back after a broker restart (engine lean reports the loss,
    test above); requests sent while the broker was away go out after the reconnect and are answered."""
    responder()
    outcome: dict[str, Any] = {}
    spec = _spec(broker, rate=100, duration=4, grace=5, engine="reconnect")
    runner = threading.Thread(target=lambda: outcome.setdefault("result", run_load(spec)))
    runner.start()
    time.sleep(1.0)
    broker.restart(down_seconds=0.5)
    runner.join(60)
    result = outcome["result"]
    c = result.counters
    print(f"\nreconnect engine across a restart: sent {c.sent} answered {c.answered} lost {c.lost}")
    assert result.failures == {}
    # only what was in flight at the restart may be lost (the broker keeps no session for us)
    assert c.sent >= 390 and c.lost < c.sent // 4 and c.answered + c.lost == c.sent
