"""The connection layer against a scripted broker: which packets it sends, and when."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import mqtt5
import pytest
from mqtt_fake_broker import WAIT, FakeBroker

from mlserving_common import mqtt

QOS1 = mqtt5.QoS.AT_LEAST_ONCE


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    with FakeBroker() as broker:
        yield broker


def _options(fake: FakeBroker, **overrides: object) -> mqtt.ConnectOptions:
    return mqtt.ConnectOptions("127.0.0.1", fake.port, client_id="u:c1", **overrides)  # type: ignore[arg-type]


def _connect_in_background(conn: mqtt.Connection) -> threading.Thread:
    thread = threading.Thread(target=conn.connect, kwargs={"timeout": WAIT}, daemon=True)
    thread.start()
    return thread


def test_connect_sends_what_the_options_say(fake: FakeBroker) -> None:
    options = _options(
        fake, username="u", password="pw", clean_start=False, session_expiry=600, receive_maximum=16, keepalive=45
    )
    with mqtt.Connection(options) as conn:
        thread = _connect_in_background(conn)
        session = fake.accept()
        thread.join(WAIT)
        assert conn.connected
        sent = session.connect
        assert (sent.client_id, sent.username, sent.password) == ("u:c1", "u", b"pw")
        assert (sent.clean_start, sent.session_expiry_interval, sent.receive_max, sent.keep_alive) == (
            False,
            600,
            16,
            45,
        )
    session.expect(mqtt5.DisconnectPacket)  # graceful close


def test_a_refused_connect_raises_with_the_reason(fake: FakeBroker) -> None:
    conn = mqtt.Connection(_options(fake))
    errors: queue.Queue[BaseException] = queue.Queue()

    def connect() -> None:
        try:
            conn.connect(timeout=WAIT)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.put(exc)

    threading.Thread(target=connect, daemon=True).start()
    fake.accept(mqtt5.ConnAckPacket(reason_code=mqtt5.ConnAckReasonCode.NOT_AUTHORIZED))
    error = errors.get(timeout=WAIT)
    assert isinstance(error, mqtt.ConnectRefused) and error.reason_code == 0x87
    assert str(error) == "broker refused the connection: 0x87 not authorized"


def test_manual_ack_sends_the_puback_only_when_asked_and_once(fake: FakeBroker) -> None:
    got: queue.Queue[mqtt.Message] = queue.Queue()
    with mqtt.Connection(_options(fake), on_message=got.put, manual_ack=True) as conn:
        thread = _connect_in_background(conn)
        session = fake.accept()
        thread.join(WAIT)
        session.send(mqtt5.PublishPacket("r", b"1", qos=QOS1, packet_id=9, correlation_data=b"c"))
        message = got.get(timeout=WAIT)
        assert (message.topic, message.payload, message.correlation_data) == ("r", b"1", b"c")
        session.nothing()
        assert conn.ack(message)
        assert session.expect(mqtt5.PubAckPacket).packet_id == 9
        assert not conn.ack(message)
        session.send(mqtt5.PublishPacket("r", b"q0"))
        assert not conn.ack(got.get(timeout=WAIT))  # QoS 0: nothing to acknowledge


def test_automatic_ack_after_the_callback(fake: FakeBroker) -> None:
    seen: list[bytes] = []
    with mqtt.Connection(_options(fake), on_message=lambda m: seen.append(m.payload)) as conn:
        thread = _connect_in_background(conn)
        session = fake.accept()
        thread.join(WAIT)
        session.send(mqtt5.PublishPacket("r", b"1", qos=QOS1, packet_id=3))
        assert session.expect(mqtt5.PubAckPacket).packet_id == 3
        assert seen == [b"1"]


def test_packets_trickling_in_byte_by_byte_are_all_decoded(fake: FakeBroker) -> None:
    got: queue.Queue[mqtt.Message] = queue.Queue()
    with mqtt.Connection(_options(fake), on_message=got.put) as conn:
        thread = _connect_in_background(conn)
        session = fake.accept()
        thread.join(WAIT)
        stream = b"".join(mqtt5.PublishPacket("t", bytes([n]) * 300).write() for n in range(3))
        for i in range(len(stream)):
            session.send_bytes(stream[i : i + 1])
        assert [got.get(timeout=WAIT).payload for _ in range(3)] == [bytes([n]) * 300 for n in range(3)]


def test_the_brokers_receive_maximum_bounds_our_window(fake: FakeBroker) -> None:
    delivered: queue.Queue[mqtt.Delivery] = queue.Queue()
    with mqtt.Connection(_options(fake), on_delivery=delivered.put) as conn:
        thread = _connect_in_background(conn)
        session = fake.accept(mqtt5.ConnAckPacket(receive_max=2))
        thread.join(WAIT)
        deliveries = [conn.publish("t", str(n).encode(), qos=1, context=n) for n in range(4)]
        first, second = session.expect(mqtt5.PublishPacket), session.expect(mqtt5.PublishPacket)
        assert (first.payload, second.payload) == (b"0", b"1")
        session.nothing()
        session.send(mqtt5.PubAckPacket(first.packet_id, reason_code=mqtt5.PubAckReasonCode.QUOTA_EXCEEDED))
        assert session.expect(mqtt5.PublishPacket).payload == b"2"
        assert deliveries[0].wait(WAIT) == 0x97 and deliveries[0].refused
        assert delivered.get(timeout=WAIT).context == 0
        assert conn.unacknowledged() == 3


def test_after_a_reconnect_subscriptions_first_then_unacknowledged_publishes_again(fake: FakeBroker) -> None:
    conn: mqtt.Connection
    subscribed: list[mqtt.SubscribeAck] = []

    def on_connect(ack: mqtt.ConnAck) -> None:
        subscribed.append(conn.subscribe("req", qos=1))

    conn = mqtt.Connection(_options(fake, reconnect=mqtt.Backoff(0.01, 0.05)), on_connect=on_connect)
    with conn:
        conn.start()
        session = fake.accept()
        session.expect(mqtt5.SubscribePacket)
        assert conn.wait_connected(WAIT)
        delivery = conn.publish("t", b"answer", qos=1)
        first = session.expect(mqtt5.PublishPacket)
        session.close()  # the broker goes away before acknowledging

        session = fake.accept()
        resubscribe = session.expect(mqtt5.SubscribePacket)
        again = session.expect(mqtt5.PublishPacket)
        assert [f.pattern for f in resubscribe.topic_filters] == ["req"]
        assert (again.packet_id, again.payload, again.duplicate) == (first.packet_id, b"answer", True)
        assert isinstance(subscribed[0].error, mqtt.ConnectionLost)  # its SUBACK never came
        session.send(mqtt5.PubAckPacket(again.packet_id))
        assert delivery.wait(WAIT) == 0


def test_the_brokers_disconnect_reason_is_reported(fake: FakeBroker) -> None:
    lost: queue.Queue[mqtt.MqttError] = queue.Queue()
    conn = mqtt.Connection(_options(fake), on_disconnect=lost.put)
    thread = _connect_in_background(conn)
    session = fake.accept()
    thread.join(WAIT)
    pending = conn.publish("t", b"x", qos=1)
    session.expect(mqtt5.PublishPacket)
    session.send(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER))
    error = lost.get(timeout=WAIT)
    assert isinstance(error, mqtt.ConnectionLost) and error.reason_code == 0x8E
    assert "0x8e session taken over" in str(error)
    with pytest.raises(mqtt.ConnectionLost):
        pending.wait(WAIT)  # fail fast: it can never be acknowledged now
    with pytest.raises(mqtt.NotConnected):
        conn.publish("t", b"y", qos=0)
    conn.close()


def test_keepalive_pings_and_a_missing_pingresp_ends_the_connection(fake: FakeBroker) -> None:
    lost: queue.Queue[mqtt.MqttError] = queue.Queue()
    conn = mqtt.Connection(_options(fake, keepalive=1), on_disconnect=lost.put)
    thread = _connect_in_background(conn)
    session = fake.accept()
    thread.join(WAIT)
    session.expect(mqtt5.PingReqPacket)
    session.send(mqtt5.PingRespPacket())
    session.expect(mqtt5.PingReqPacket)  # answered: pings go on
    error = lost.get(timeout=WAIT)  # this one is not answered
    assert isinstance(error, mqtt.ConnectionLost) and "PINGRESP" in str(error)
    conn.close()


def test_publishes_from_many_threads_all_arrive(fake: FakeBroker) -> None:
    with mqtt.Connection(_options(fake)) as conn:
        thread = _connect_in_background(conn)
        session = fake.accept()
        thread.join(WAIT)

        def worker(n: int) -> None:
            for i in range(200):
                conn.publish(f"t/{n}", str(i).encode(), qos=0)

        workers = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        got: dict[str, list[bytes]] = {}
        for _ in range(800):
            packet = session.expect(mqtt5.PublishPacket)
            got.setdefault(packet.topic, []).append(packet.payload)
        assert got == {f"t/{n}": [str(i).encode() for i in range(200)] for n in range(4)}


def test_wait_inside_a_callback_is_refused_not_a_deadlock(fake: FakeBroker) -> None:
    errors: queue.Queue[BaseException] = queue.Queue()
    conn: mqtt.Connection

    def on_message(message: mqtt.Message) -> None:
        try:
            conn.publish("t", b"x", qos=1).wait(1)
        except RuntimeError as exc:
            errors.put(exc)

    conn = mqtt.Connection(_options(fake), on_message=on_message)
    with conn:
        thread = _connect_in_background(conn)
        session = fake.accept()
        thread.join(WAIT)
        session.send(mqtt5.PublishPacket("r", b""))
        assert isinstance(errors.get(timeout=WAIT), RuntimeError)
