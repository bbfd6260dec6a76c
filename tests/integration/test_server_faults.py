"""Faults under load, each with nothing lost after client retries (figures printed with -s):

- the broker restarts: servers reconnect, clients resend what went unanswered;
- a server is killed (SIGKILL) while another replica serves the same shared subscription;
- a poison input makes inference raise (a model whose GATHER index comes from the input) or
  produce a non-finite forecast: only that request gets an `internal` error, its batch companions
  are answered, the server keeps serving;
- a client stops reading its answers: its queue fills at the broker, the server and the other
  clients carry on, and the stalled client gets every answer once it reads again.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from mlserving_common import mqtt

from mqtt_support import connect_as

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


def figures(name: str, result: dict) -> str:
    codes: dict[str, int] = {}
    for error in result["errors"]:
        codes[error["error"]["code"]] = codes.get(error["error"]["code"], 0) + 1
    line = (
        f"\n{name}: sent {result['sent']} answered {result['answered']} errors {sum(codes.values())} {codes or ''} "
        f"lost {result['lost']} (retries {result['retries']}, duplicates {result['duplicates']})"
    )
    print(line)
    return line


@pytest.mark.slow
def test_broker_restart_under_load_servers_reconnect_and_retries_lose_nothing(
    broker, server_process, registry_root, mqtt_client, load, until
):
    servers = [server_process(registry_root, name=f"s{i}") for i in (1, 2)]
    client = mqtt_client("tenant-a")
    restarted = threading.Event()

    def progress(i: int) -> None:
        if i == 1000 and not restarted.is_set():
            restarted.set()
            threading.Thread(target=broker.restart, kwargs={"down_seconds": 1.0}, daemon=True).start()

    result = load(client, 3000, SERIES, rate=500, retry_after=3.0, timeout=90, on_progress=progress)
    figures("broker restart (down 1 s) at request 1000 of 3000, 500 req/s, 2 servers", result)
    assert result["lost"] == 0, result["lost"]
    assert [e for e in result["errors"] if e["error"]["code"] not in ("overloaded",)] == []
    for server in servers:
        until(server.is_ready, timeout=30)
        assert server.proc.poll() is None
        assert server.metric("mlserving_broker_connects_total") >= 2
    # and serving goes on normally afterwards
    assert "prediction" in client.request({"series": SERIES})


def test_server_starts_while_broker_is_down_and_connects_when_it_comes(
    broker, server_process, registry_root, mqtt_client, until
):
    broker.local.stop()
    server = server_process(registry_root, wait=False)
    until(lambda: server.status("/healthz") == 200, timeout=30)
    status, body = server.get("/readyz")
    assert status == 503 and '"connected":false' in body
    broker.local.start()
    server.wait_ready(timeout=30)
    assert "prediction" in mqtt_client("tenant-a").request({"series": SERIES})


@pytest.mark.slow
def test_server_sigkill_under_load_the_other_replica_and_retries_lose_nothing(
    server_process, registry_root, mqtt_client, load
):
    staying = server_process(registry_root, name="staying")
    killed = server_process(registry_root, name="killed")
    client = mqtt_client("tenant-a")
    done = threading.Event()

    def progress(i: int) -> None:
        if i == 1000 and not done.is_set():
            done.set()
            killed.signal(signal.SIGKILL)

    result = load(client, 3000, SERIES, rate=500, retry_after=3.0, timeout=90, on_progress=progress)
    figures("server SIGKILL at request 1000 of 3000, 500 req/s, 2 servers", result)
    assert killed.wait(10) == -signal.SIGKILL
    assert result["lost"] == 0, result["lost"]
    assert [e for e in result["errors"] if e["error"]["code"] != "overloaded"] == []
    assert staying.proc.poll() is None and staying.is_ready()
    assert staying.metric("mlserving_requests_total", tenant="tenant-a", outcome="ok") > 0


# -- poison inputs ---------------------------------------------------------------------------------

POISON_INDEX = 100.0  # a first reading >= 10 puts the poison model's GATHER index out of bounds


def _build_poison_package(out: Path) -> Path:
    """A real TFLite model that fails at invoke time for some inputs: y = table[|x0|] + mean(x).

    TFLite checks GATHER indices: the interpreter raises "gather index out of bounds" for the
    whole batch. Warm-up inputs (|x0| <= 1) and ordinary ones (|x0| < 10) are fine.
    """
    import tensorflow as tf

    from mlserving_common.package import Metadata, Normalization, TensorSpec, write_package

    table = tf.constant(np.arange(10, dtype=np.float32))

    class Poison(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])
        def __call__(self, x):
            index = tf.cast(tf.abs(x[:, 0]), tf.int32)
            return tf.reshape(tf.gather(table, index), [-1, 1]) + tf.reduce_mean(x, axis=1, keepdims=True)

    module = Poison()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    model = converter.convert()
    metadata = Metadata(
        name="poison",
        version="v0",
        created_at="2026-01-01T00:00:00Z",
        window=6,
        normalization=Normalization(mean=0.0, std=1.0),
        input=TensorSpec([-1, 6]),
        output=TensorSpec([-1, 1]),
        model_sha256=hashlib.sha256(model).hexdigest(),
    )
    write_package(out, model, metadata)
    return out


@pytest.fixture(scope="session")
def poison_package(tmp_path_factory) -> Path:
    return _build_poison_package(tmp_path_factory.mktemp("poison") / "package")


@pytest.mark.slow
def test_poison_input_fails_alone_and_does_not_block_or_crash(
    server_process, registry_root, mqtt_client, poison_package
):
    from mlserving_common.registry import FilesystemRegistry

    FilesystemRegistry(registry_root).publish(poison_package, promote=True)
    tenants = {
        "tenant-a": {"models": {"lstm": "current", "poison": "current"}, "default_model": "lstm"},
        "tenant-b": {"models": {"ann": "current"}},
    }
    # A worker that waits for companions, so poison and good requests share batches.
    server = server_process(registry_root, tenants=tenants, batching={"max_batch": 64, "max_wait_ms": 20})
    clients = {"a": mqtt_client("tenant-a"), "b": mqtt_client("tenant-b")}
    sent: dict[str, tuple[str, str]] = {}  # id -> (client, expected outcome)
    for round_ in range(20):
        for k in range(10):
            rid = f"r{round_}-{k}"
            if k == 3:  # invoke raises for the whole batch: the server retries it request by request
                body, who, expected = {"series": [POISON_INDEX, 1, 2, 3, 4, 5], "model": "poison"}, "a", "internal"
            elif k == 6:  # finite readings, a valid index, but the mean overflows float32: forecast inf
                body, who, expected = {"series": [5, 3e38, 3e38, 3e38, 3e38, 3e38], "model": "poison"}, "a", "internal"
            elif k % 2:
                body, who, expected = {"series": [k, 1, 2, 3, 4, 5], "model": "poison"}, "a", "ok"
            else:
                body, who, expected = {"series": SERIES}, ("a" if k % 4 else "b"), "ok"
            clients[who].send({"id": rid, **body})
            sent[rid] = (who, expected)
        time.sleep(0.05)
    for who, client in clients.items():
        assert client.wait_for([i for i, (w, _) in sent.items() if w == who], timeout=60)
    outcome = {i: clients[w].answers[i][0].body.get("error", {}).get("code", "ok") for i, (w, _) in sent.items()}
    codes: dict[str, int] = {}
    for code in outcome.values():
        codes[code] = codes.get(code, 0) + 1
    print(
        f"\npoison inputs (20 of each kind among 200 requests): sent {len(sent)} answered {len(outcome)} "
        f"errors {sum(v for k, v in codes.items() if k != 'ok')} {codes} lost {len(sent) - len(outcome)}"
    )
    assert all(len(clients[w].answers[i]) == 1 for i, (w, _) in sent.items())
    assert {i: o for i, o in outcome.items() if o != sent[i][1]} == {}
    assert server.metric("mlserving_requests_total", model="poison", outcome="internal") == 40
    messages = {i: clients["a"].answers[i][0].body["error"]["message"] for i, (_, e) in sent.items() if e == "internal"}
    assert all("inference failed" in m for i, m in messages.items() if i.endswith("-3")), messages
    assert all("non-finite" in m for i, m in messages.items() if i.endswith("-6")), messages
    assert server.proc.poll() is None and server.is_ready()
    assert "inference failed" in server.log()


# -- a client that stops reading ------------------------------------------------------------------


class RawTenantClient:
    """A plain client of tenant-b that can stop reading its socket and resume.

    Not reading = its network thread held in a message callback: the socket stays open, nothing
    more is read from it (nor acknowledged) until read_again()."""

    def __init__(self, broker, reply_topic: str, subscribe: bool) -> None:
        self.reply_topic = reply_topic
        self.request_topic = broker.request_topic("tenant-b")
        self.answers: dict[str, int] = {}
        self._reading = threading.Event()
        self._reading.set()
        # keepalive well beyond the stall, so the broker keeps the connection (and its queue)
        self._client = connect_as(broker, "tenant-b", keepalive=300, on_message=self._on_message)
        if subscribe:
            self._client.subscribe(reply_topic, qos=1)

    def _on_message(self, message: mqtt.Message) -> None:
        self._reading.wait()
        rid = orjson.loads(message.payload).get("id")
        self.answers[rid] = self.answers.get(rid, 0) + 1

    def send(self, ids: list[str], instances: list[list[float]]) -> None:
        for rid in ids:
            self._client.publish(
                self.request_topic,
                orjson.dumps({"id": rid, "instances": instances}),
                qos=1,
                timeout=30,
                response_topic=self.reply_topic,
            )

    def stop_reading(self) -> None:
        self._reading.clear()  # the next message holds the network thread: the socket stays open; nobody reads it

    def read_again(self) -> None:
        self._reading.set()

    def close(self) -> None:
        self._reading.set()
        self._client.close()


@pytest.mark.slow
def test_client_that_stops_reading_does_not_affect_the_server_or_other_clients(
    broker, server_process, registry_root, mqtt_client, load, until
):
    server = server_process(registry_root)
    reply_topic = f"{broker.response_topic('tenant-b')}/stalled-{uuid.uuid4().hex[:8]}"
    stalled = RawTenantClient(broker, reply_topic, subscribe=True)
    feeder = RawTenantClient(broker, reply_topic, subscribe=False)  # sends on the stalled client's behalf
    try:
        stalled.stop_reading()
        # 500 requests of 1024 series: ~20 KB per answer, ~10 MB in all, far more than the socket
        # buffers between the broker and the stalled client hold.
        windows = [[20.0 + (i % 7), 20.5, 21.0, 21.5, 22.0, 22.5] for i in range(1024)]
        big_ids = [f"big-{i}" for i in range(500)]
        feeder.send(big_ids, windows)
        until(
            lambda: server.metric("mlserving_requests_total", tenant="tenant-b", outcome="ok") >= len(big_ids),
            timeout=120,
        )
        # Meanwhile everyone else is served as usual: another client of the same tenant, and tenant A.
        result_b = load(mqtt_client("tenant-b"), 500, SERIES, rate=250, retry_after=3.0, timeout=60)
        result_a = load(mqtt_client("tenant-a"), 1000, SERIES, rate=250, retry_after=3.0, timeout=60)
        figures("stalled client: tenant-a meanwhile, 250 req/s", result_a)
        figures("stalled client: another tenant-b client meanwhile, 250 req/s", result_b)
        assert result_a["lost"] == result_b["lost"] == 0 and not result_a["errors"] and not result_b["errors"]
        assert server.proc.poll() is None and server.is_ready()
        assert server.get("/metrics")[0] == 200
        waiting = len(big_ids) - len(stalled.answers)
        assert waiting > 0  # answers are held for it at the broker, not delivered, not dropped
        stalled.read_again()
        until(lambda: len(stalled.answers) == len(big_ids), timeout=120)
        print(
            f"\nstalled client: sent {len(big_ids)} batched requests (1024 series each); {waiting} answers "
            f"waited at the broker while it did not read; once it read again: answered "
            f"{len(stalled.answers)} errors 0 lost {len(big_ids) - len(stalled.answers)}"
        )
        assert all(count == 1 for count in stalled.answers.values())
    finally:
        feeder.close()
        stalled.close()
