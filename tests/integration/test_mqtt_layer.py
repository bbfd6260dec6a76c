"""mlserving_common.mqtt against the real Mosquitto (with our auth plugin and ACLs)."""

from __future__ import annotations

import queue
import threading
import uuid

import pytest

from mlserving_common import mqtt, protocol

WAIT = 15.0


def _options(broker, user: str = "trainer", **overrides) -> mqtt.ConnectOptions:
    username, password = broker.credentials(user)
    settings = {
        "client_id": protocol.owned_client_id(username, f"t-{uuid.uuid4().hex[:12]}"),
        "username": username,
        "password": password,
        **overrides,
    }
    return mqtt.ConnectOptions(broker.host, broker.port, **settings)


def _topic(broker, leaf: str) -> str:
    return f"{broker.prefix}/_trainer/test-{uuid.uuid4().hex[:8]}/{leaf}"


def test_publish_subscribe_retained_and_request_response(broker) -> None:
    got: queue.Queue[mqtt.Message] = queue.Queue()
    topic = _topic(broker, "state")
    with mqtt.Connection(_options(broker), on_message=got.put) as conn:
        ack = conn.connect(timeout=WAIT)
        assert not ack.session_present
        assert conn.publish(topic, b"kept", qos=1, retain=True).wait(WAIT) == 0x10  # no matching subscribers
        assert conn.subscribe(topic, qos=1).wait(WAIT) == [1]
        retained = got.get(timeout=WAIT)
        assert (retained.topic, retained.payload, retained.retain) == (topic, b"kept", True)

        reply = f"{topic}/reply"
        assert conn.subscribe(reply, qos=1).wait(WAIT) == [1]
        sent = conn.publish(
            reply, b"ask", qos=1, response_topic=topic, correlation_data=b"req-1", user_properties=[("k", "v")]
        )
        assert sent.wait(WAIT) == 0 and not sent.refused
        answer = got.get(timeout=WAIT)
        assert answer.payload == b"ask" and answer.correlation_data == b"req-1"
        assert answer.response_topic == topic and answer.user_properties == [("k", "v")]
        conn.publish(topic, b"", qos=1, retain=True).wait(WAIT)  # clear the retained message


def test_bad_password_is_a_clear_refusal(broker) -> None:
    options = _options(broker, password="wrong")
    with pytest.raises(mqtt.ConnectRefused) as refused:
        mqtt.Connection(options).connect(timeout=WAIT)
    assert refused.value.reason_code in (0x86, 0x87)
    assert "broker refused the connection: 0x8" in str(refused.value)


def test_client_id_of_another_user_is_refused(broker) -> None:
    options = _options(broker, client_id=protocol.owned_client_id("tenant-a", "x"))
    with pytest.raises(mqtt.ConnectRefused):
        mqtt.Connection(options).connect(timeout=WAIT)


def test_puback_and_suback_refusals_reach_the_caller(broker) -> None:
    with mqtt.Connection(_options(broker)) as conn:
        conn.connect(timeout=WAIT)
        delivery = conn.publish(broker.request_topic("tenant-a"), b"{}", qos=1)
        assert delivery.wait(WAIT) == 0x87
        assert delivery.refused and delivery.reason == "0x87 not authorized"
        allowed = _topic(broker, "ok")
        ack = conn.subscribe([allowed, broker.response_topic("tenant-a")], qos=1)
        assert ack.wait(WAIT) == [1, 0x87]
        assert ack.refused == [broker.response_topic("tenant-a")]
        assert conn.unsubscribe([allowed]).wait(WAIT) == [0]


def test_tls_with_a_ca_file(broker, tls_files) -> None:
    options = _options(broker, tls_ca_file=str(tls_files.ca_file))
    options = mqtt.ConnectOptions(**{**options.__dict__, "port": broker.local.tls_port})
    got: queue.Queue[mqtt.Message] = queue.Queue()
    topic = _topic(broker, "tls")
    with mqtt.Connection(options, on_message=got.put) as conn:
        conn.connect(timeout=WAIT)
        conn.subscribe(topic).wait(WAIT)
        conn.publish(topic, b"secret" * 20_000, qos=1).wait(WAIT)  # several TLS records
        assert got.get(timeout=WAIT).payload == b"secret" * 20_000


def test_reconnects_after_a_broker_restart_and_resubscribes(broker) -> None:
    got: queue.Queue[mqtt.Message] = queue.Queue()
    topic = _topic(broker, "restart")
    connects: list[mqtt.ConnAck] = []
    lost: list[mqtt.MqttError] = []
    conn: mqtt.Connection

    def on_connect(ack: mqtt.ConnAck) -> None:
        connects.append(ack)
        conn.subscribe(topic, qos=1)

    options = _options(broker, reconnect=mqtt.Backoff(0.1, 0.5))
    conn = mqtt.Connection(options, on_message=got.put, on_connect=on_connect, on_disconnect=lost.append)
    with conn:
        conn.start()
        assert conn.wait_connected(WAIT)
        broker.restart(down_seconds=1.0)
        assert lost and isinstance(lost[0], mqtt.ConnectionLost)
        queued = conn.publish(topic, b"after", qos=1)  # queued while down or sent on the new connection
        assert queued.wait(WAIT) in (0, 0x10)
        assert conn.wait_connected(WAIT) and len(connects) >= 2
        # the subscription made in on_connect is back: a fresh publish comes round
        for _ in range(50):
            conn.publish(topic, b"ping", qos=1).wait(WAIT)
            try:
                if got.get(timeout=0.2).payload in (b"ping", b"after"):
                    break
            except queue.Empty:
                continue
        else:
            pytest.fail("no message after reconnect")


def test_fail_fast_connection_reports_the_loss(broker) -> None:
    lost = threading.Event()
    with mqtt.Connection(_options(broker), on_disconnect=lambda error: lost.set()) as conn:
        conn.connect(timeout=WAIT)
        broker.local.stop()
        assert lost.wait(WAIT)
        with pytest.raises(mqtt.NotConnected):
            conn.publish(_topic(broker, "x"), b"", qos=1)
        with pytest.raises(mqtt.NotConnected):
            conn.subscribe(_topic(broker, "x"))


def test_unacknowledged_messages_are_redelivered_on_a_persistent_session(broker) -> None:
    topic = _topic(broker, "records")
    client_id = protocol.owned_client_id("trainer", f"session-{uuid.uuid4().hex[:8]}")
    persistent = _options(broker, client_id=client_id, clean_start=False, session_expiry=60)
    got: queue.Queue[mqtt.Message] = queue.Queue()

    first = mqtt.Connection(persistent, on_message=got.put, manual_ack=True)
    first.connect(timeout=WAIT)
    first.subscribe(topic, qos=1).wait(WAIT)
    with mqtt.Connection(_options(broker)) as sender:
        sender.connect(timeout=WAIT)
        sender.publish(topic, b"one", qos=1).wait(WAIT)
        sender.publish(topic, b"two", qos=1).wait(WAIT)
    one, two = got.get(timeout=WAIT), got.get(timeout=WAIT)
    assert first.ack(one) and not first.ack(one)  # acknowledged once only
    first.close()
    assert not first.ack(two)  # its packet id died with the connection

    second = mqtt.Connection(persistent, on_message=got.put, manual_ack=True)
    ack = second.connect(timeout=WAIT)
    assert ack.session_present
    again = got.get(timeout=WAIT)
    assert again.payload == b"two" and again.duplicate
    assert second.ack(again)
    second.close()

    third = mqtt.Connection(persistent, on_message=got.put, manual_ack=True)
    third.connect(timeout=WAIT)
    third.publish(topic, b"marker", qos=1).wait(WAIT)  # messages reach one client in order
    assert got.get(timeout=WAIT).payload == b"marker"
    third.close()
    cleanup = mqtt.Connection(mqtt.ConnectOptions(**{**persistent.__dict__, "clean_start": True}))
    cleanup.connect(timeout=WAIT)
    cleanup.close()


def test_inflight_window_keeps_order_and_ids_wrap_past_65535(broker) -> None:
    count = 70_000  # > 65,535 packet ids
    topic = _topic(broker, "window")
    received: list[bytes] = []
    done = threading.Event()
    acked: list[mqtt.Delivery] = []

    def on_message(message: mqtt.Message) -> None:
        received.append(message.payload)
        if len(received) == count:
            done.set()

    options = _options(broker, max_inflight=50)
    with mqtt.Connection(options, on_message=on_message, on_delivery=acked.append) as conn:
        conn.connect(timeout=WAIT)
        conn.subscribe(topic, qos=1).wait(WAIT)
        deliveries = [conn.publish(topic, str(i).encode(), qos=1) for i in range(count)]
        assert done.wait(120), f"{len(received)} of {count} arrived"
        deliveries[-1].wait(WAIT)
    assert received == [str(i).encode() for i in range(count)]
    assert len(acked) == count and all(d.reason_code == 0 for d in deliveries)
    ids = [d.packet_id for d in deliveries]
    wrap = ids.index(65535)
    assert max(ids) == 65535 and ids[wrap + 1] == 1  # after the last id, the first free one again


def test_closed_loop_with_answers_published_from_a_worker_thread_never_stalls(broker) -> None:
    """Requests answered from another thread (as the server's batch worker does) wake the network
    thread; a lost wake-up once left answers queued unsent and the loop stalled for good."""
    requests_topic, replies_topic = _topic(broker, "requests"), _topic(broker, "replies")
    total, outstanding = 60_000, 256
    work: queue.Queue[mqtt.Message] = queue.Queue()
    answered = threading.Event()
    count = [0]
    server: mqtt.Connection
    client: mqtt.Connection

    def on_request(message: mqtt.Message) -> None:
        work.put(message)
        server.ack(message)

    def worker() -> None:
        while (message := work.get()) is not None:
            server.publish(replies_topic, message.payload, qos=1, correlation_data=message.correlation_data)

    def on_answer(message: mqtt.Message) -> None:
        count[0] += 1
        if count[0] == total:
            answered.set()
        elif count[0] <= total - outstanding:
            client.publish(requests_topic, b"next", qos=1, correlation_data=message.correlation_data)

    server = mqtt.Connection(_options(broker), on_message=on_request, manual_ack=True)
    client = mqtt.Connection(_options(broker), on_message=on_answer)
    for _ in range(2):  # two publishing threads, like a worker plus lifecycle events
        threading.Thread(target=worker, daemon=True).start()
    with server, client:
        server.connect(timeout=WAIT)
        server.subscribe(requests_topic).wait(WAIT)
        client.connect(timeout=WAIT)
        client.subscribe(replies_topic).wait(WAIT)
        for n in range(outstanding):
            client.publish(requests_topic, b"first", qos=1, correlation_data=b"%d" % n)
        assert answered.wait(120), f"{count[0]} of {total} answered"
        for _ in range(2):
            work.put(None)  # type: ignore[arg-type]
