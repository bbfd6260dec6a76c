"""Limits answer explicitly: payload size at broker and server, rate_limited per tenant, overloaded when the
queue is full, each where the client listens. Nothing silent."""

from __future__ import annotations

from concurrent.futures import wait

import pytest

from mlserving_client import Client, PredictionError
from mlserving_common import mqtt
from mlserving_common.mosquitto import DEFAULT_LIMITS

from mqtt_support import connect_as

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


def test_rate_limited_tenant_gets_error_answers_and_other_tenant_is_unaffected(
    server_process, registry_root, mqtt_client
):
    tenants = {
        "tenant-a": {"models": {"lstm": "current"}, "rate_limit": {"per_second": 1, "burst": 5}},
        "tenant-b": {"models": {"ann": "current"}},
    }
    server = server_process(registry_root, tenants=tenants)
    a, b = mqtt_client("tenant-a"), mqtt_client("tenant-b")
    ids = [f"a-{i}" for i in range(40)]
    for request_id in ids:
        a.send({"id": request_id, "series": SERIES})
    b_ids = [f"b-{i}" for i in range(40)]
    for request_id in b_ids:
        b.send({"id": request_id, "series": SERIES})
    assert a.wait_for(ids) and b.wait_for(b_ids)
    assert all(len(a.answers[i]) == 1 for i in ids)
    codes = [a.answers[i][0].body.get("error", {}).get("code", "ok") for i in ids]
    assert set(codes) == {"ok", "rate_limited"}
    assert 5 <= codes.count("ok") <= 10  # the burst, plus what refilled meanwhile
    assert all("prediction" in b.answers[i][0].body for i in b_ids)
    assert server.metric("mlserving_requests_total", tenant="tenant-a", outcome="rate_limited") == codes.count(
        "rate_limited"
    )


def test_full_queue_answers_overloaded_instead_of_dropping(server_process, registry_root, mqtt_client):
    # A tiny queue and a worker that waits long for companions: most of a burst cannot be queued.
    server = server_process(registry_root, limits={"max_pending": 2}, batching={"max_batch": 64, "max_wait_ms": 300})
    client = mqtt_client("tenant-a")
    ids = [f"burst-{i}" for i in range(300)]
    for request_id in ids:
        client.send({"id": request_id, "series": SERIES})
    assert client.wait_for(ids, timeout=30)
    assert all(len(client.answers[i]) == 1 for i in ids)
    codes = [client.answers[i][0].body.get("error", {}).get("code", "ok") for i in ids]
    assert codes.count("overloaded") > 0 and codes.count("ok") > 0
    assert set(codes) == {"ok", "overloaded"}
    assert server.metric("mlserving_requests_total", outcome="overloaded") == codes.count("overloaded")


@pytest.mark.slow
def test_flood_is_answered_or_explicitly_rejected_never_dropped(server_process, registry_root, mqtt_client, load):
    """20,000 requests at once into a server whose queue holds 1,000: every one gets one answer,
    or (beyond the tenant's backlog at the broker, plugin `tenant_backlog`) a PUBACK refusal."""
    server = server_process(registry_root, limits={"max_pending": 1000})
    client = mqtt_client("tenant-a")
    result = load(client, 20_000, SERIES, timeout=180)
    assert result["lost"] == 0
    assert result["duplicates"] == 0
    assert {e["error"]["code"] for e in result["errors"]} <= {"overloaded"}
    ok = server.metric("mlserving_requests_total", tenant="tenant-a", outcome="ok")
    assert ok + len(result["errors"]) + result["refused"] == 20_000


def test_rejections_reach_the_client_on_its_own_reply_topic(broker, server_process, registry_root):
    """rate_limited and overloaded are answered where the request asked (its Response Topic), so
    the client library, which listens on `<responses>/<client id>` only, sees them at once."""
    tenants = {"tenant-a": {"models": {"lstm": "current"}, "rate_limit": {"per_second": 1, "burst": 2}}}
    server_process(registry_root, tenants=tenants)
    user, password = broker.credentials("tenant-a")
    with Client(broker.host, broker.port, user, password, tenant="tenant-a", timeout=10.0, attempts=1) as client:
        futures = [client.submit(SERIES) for _ in range(10)]
        done, _ = wait(futures, timeout=15)
        assert len(done) == 10  # answered, not timed out
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append("ok")
            except PredictionError as exc:
                codes.append(exc.code)
        assert codes.count("rate_limited") >= 7 and set(codes) <= {"ok", "rate_limited"}
        assert client.stats().timeouts == 0


def test_payload_limits_at_the_broker_and_at_the_server(broker, server_process, registry_root, mqtt_client):
    """The broker refuses a packet over its max_packet_size (264 KiB): Mosquitto 2.0 drops the
    connection of a client that sends it, before any server sees it. The server answers
    payload_too_large for what passes the broker (message_size_limit 260 KiB) but is over
    limits.max_payload_bytes (256 KiB)."""
    server = server_process(registry_root)
    too_big_for_broker = b'{"id": "huge", "series": [' + b"1.0, " * (2 * 1024 * 1024 // 5) + b"1.0]}"
    assert len(too_big_for_broker) > DEFAULT_LIMITS["max_packet_size"]
    sender = connect_as(broker, "tenant-a")  # no reconnect: the big message is sent once
    delivery = sender.connection.publish(broker.request_topic("tenant-a"), too_big_for_broker, qos=1)
    outcome: dict[str, object] = {}
    try:
        outcome["puback"] = delivery.wait(20)
    except mqtt.ConnectionLost as lost:  # the broker dropped us: no PUBACK will come
        outcome["disconnect"] = lost
    sender.close()
    dropped = outcome.get("disconnect")
    assert "puback" not in outcome and isinstance(dropped, mqtt.ConnectionLost), outcome
    assert dropped.reason_code is None or dropped.reason_code >= mqtt.REFUSED, outcome  # not a normal DISCONNECT

    client = mqtt_client("tenant-a")
    big_for_server = b'{"id": "big", "series": [' + b"1.0, " * (258 * 1024 // 5) + b"1.0]}"
    assert 262144 < len(big_for_server) < DEFAULT_LIMITS["message_size_limit"]
    client.publish_raw(big_for_server, correlation=b"big")  # the server does not read a payload that large:
    assert client.wait_answers(1)  # the answer's id is null, Correlation Data matches it
    (answer,) = client.all_answers
    assert (answer.correlation, answer.body["error"]["code"]) == (b"big", "payload_too_large")
    assert "prediction" in client.request({"series": SERIES})
    assert "huge" not in client.answers
    assert server.metric("mlserving_requests_total", outcome="payload_too_large") == 1
    assert server.metric("mlserving_requests_total") == 2  # the 2 MiB+ message never reached it
