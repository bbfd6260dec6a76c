"""The server's transport against a scripted broker: what it sends on the wire, and when.

CONNECT asks for a session that dies with the connection and carries Receive Maximum; requests
are acknowledged only once the pipeline took them; beyond limits.max_outgoing unacknowledged
answers requests are held, and taken oldest first as PUBACKs come in.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import mqtt5
import pytest
from mqtt_fake_broker import WAIT, FakeBroker, Session

from mlserving_common import protocol
from mlserving_server.config import parse_config
from mlserving_server.metrics import Metrics
from mlserving_server.transport import Transport

QOS1 = mqtt5.QoS.AT_LEAST_ONCE
REQUESTS = "ml/tenant-a/requests"
Request = tuple[str, bytes, "str | None", "bytes | None"]


class Server:
    def __init__(self, fake: FakeBroker, max_outgoing: int = 10, answer: bool = False) -> None:
        """`answer`: the handler answers each request at once, as the pipeline does e.g. `overloaded`."""
        config = parse_config(
            {
                "broker": {"host": "127.0.0.1", "port": fake.port, "username": "server"},
                "limits": {"receive_maximum": 16, "max_outgoing": max_outgoing},
                "tenants": {"tenant-a": {"models": {"lstm": "current"}}},
            },
            env={},
        )
        self.requests: queue.Queue[Request] = queue.Queue()
        self.transport = Transport(config, Metrics(), self._take, client_id="server:s1")
        self._answer = answer
        self.transport.subscribe(["tenant-a"])
        self.transport.start()
        self.session = fake.accept()
        self.subscribe = self.session.expect(mqtt5.SubscribePacket)
        self.session.send(mqtt5.SubAckPacket(self.subscribe.packet_id, [mqtt5.SubAckReasonCode(1)]))

    def _take(self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        self.requests.put((topic, payload, response_topic, correlation))
        if self._answer and response_topic is not None:
            self.transport.publish(response_topic, b"answer", correlation)

    def request(self, packet_id: int, body: bytes = b"{}", session: Session | None = None) -> None:
        (session or self.session).send(
            mqtt5.PublishPacket(
                REQUESTS,
                body,
                qos=QOS1,
                packet_id=packet_id,
                response_topic="ml/tenant-a/responses",
                correlation_data=b"c%d" % packet_id,
            )
        )


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    with FakeBroker() as broker:
        yield broker


@pytest.fixture
def server(fake: FakeBroker) -> Iterator[Server]:
    server = Server(fake)
    yield server
    server.transport.stop()


def _until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met")


def test_connect_asks_for_a_session_that_ends_with_the_connection(server: Server) -> None:
    connect = server.session.connect
    assert (connect.client_id, connect.username) == ("server:s1", "server")
    assert (connect.clean_start, connect.session_expiry_interval, connect.receive_max) == (True, 0, 16)
    (topic_filter,) = server.subscribe.topic_filters
    assert topic_filter.pattern == protocol.shared_subscription(REQUESTS, protocol.DEFAULT_SHARE_GROUP)
    assert int(topic_filter.max_qos) == 1
    _until(lambda: server.transport.subscribed() == {"tenant-a"})
    assert server.transport.connected


def test_a_request_is_acknowledged_after_the_pipeline_took_it_and_answered_with_its_correlation(
    server: Server,
) -> None:
    server.request(5, b'{"id": "1"}')
    topic, payload, response_topic, correlation = server.requests.get(timeout=WAIT)
    assert (topic, payload, response_topic, correlation) == (REQUESTS, b'{"id": "1"}', "ml/tenant-a/responses", b"c5")
    assert server.session.expect(mqtt5.PubAckPacket).packet_id == 5
    server.transport.publish(response_topic, b'{"ok": 1}', correlation)
    answer = server.session.expect(mqtt5.PublishPacket)
    assert (answer.topic, answer.payload, answer.correlation_data, int(answer.qos)) == (
        "ml/tenant-a/responses",
        b'{"ok": 1}',
        b"c5",
        1,
    )
    assert server.transport.unacked() == 1
    server.session.send(mqtt5.PubAckPacket(answer.packet_id))
    _until(lambda: server.transport.unacked() == 0)


def test_requests_are_held_unacknowledged_while_answers_back_up(fake: FakeBroker) -> None:
    server = Server(fake, max_outgoing=2, answer=True)
    try:
        answers = []
        for n in range(2):
            server.transport.publish("ml/tenant-a/responses", b"a%d" % n)
            answers.append(server.session.expect(mqtt5.PublishPacket))
        server.request(7)
        server.request(8)
        _until(lambda: server.transport.held() == 2)
        assert server.requests.empty()
        server.session.nothing()  # no PUBACK for held requests
        server.session.send(mqtt5.PubAckPacket(answers[0].packet_id))
        assert server.requests.get(timeout=WAIT)[3] == b"c7"  # oldest first
        assert server.session.expect(mqtt5.PublishPacket).correlation_data == b"c7"  # its answer
        assert server.session.expect(mqtt5.PubAckPacket).packet_id == 7
        assert server.transport.held() == 1  # c7's answer took the free slot
        server.session.send(mqtt5.PubAckPacket(answers[1].packet_id))
        assert server.requests.get(timeout=WAIT)[3] == b"c8"
        assert server.session.expect(mqtt5.PublishPacket).correlation_data == b"c8"
        assert server.session.expect(mqtt5.PubAckPacket).packet_id == 8
    finally:
        server.transport.stop()


def test_after_a_reconnect_it_resubscribes_and_never_acks_a_dead_connections_packet_id(fake: FakeBroker) -> None:
    server = Server(fake, max_outgoing=1)
    try:
        server.transport.publish("ml/tenant-a/responses", b"a")
        server.session.expect(mqtt5.PublishPacket)
        server.request(4)  # held: one answer is unacknowledged
        _until(lambda: server.transport.held() == 1)
        server.session.close()
        session = fake.accept()
        resubscribe = session.expect(mqtt5.SubscribePacket)
        assert [f.pattern for f in resubscribe.topic_filters] == [server.subscribe.topic_filters[0].pattern]
        again = session.expect(mqtt5.PublishPacket)  # the unacknowledged answer, again
        assert again.duplicate
        session.send(mqtt5.SubAckPacket(resubscribe.packet_id, [mqtt5.SubAckReasonCode(1)]))
        session.send(mqtt5.PubAckPacket(again.packet_id))
        assert server.requests.get(timeout=WAIT)[3] == b"c4"  # taken: the pipeline answers it
        server.request(4, session=session)  # the broker's redelivery on the new connection: acked
        assert server.requests.get(timeout=WAIT)[3] == b"c4"
        assert session.expect(mqtt5.PubAckPacket).packet_id == 4
        session.nothing()  # exactly one PUBACK for id 4
    finally:
        server.transport.stop()


def test_unsubscribe_all_waits_for_the_brokers_unsuback(server: Server) -> None:
    _until(lambda: server.transport.subscribed() == {"tenant-a"})
    result: queue.Queue[bool] = queue.Queue()
    threading.Thread(target=lambda: result.put(server.transport.unsubscribe_all(WAIT)), daemon=True).start()
    unsubscribe = server.session.expect(mqtt5.UnsubscribePacket)
    assert unsubscribe.patterns == [server.subscribe.topic_filters[0].pattern]
    server.session.send(mqtt5.UnsubAckPacket(unsubscribe.packet_id, [mqtt5.UnsubAckReasonCode.SUCCESS]))
    assert result.get(timeout=WAIT) is True
    assert server.transport.subscribed() == set()


def test_a_refused_subscription_is_not_counted_as_subscribed(fake: FakeBroker) -> None:
    config = parse_config(
        {"broker": {"host": "127.0.0.1", "port": fake.port}, "tenants": {"tenant-a": {"models": {"lstm": "current"}}}},
        env={},
    )
    transport = Transport(config, Metrics(), lambda *request: None, client_id="server:s2")
    transport.subscribe(["tenant-a"])
    transport.start()
    try:
        session = fake.accept()
        subscribe = session.expect(mqtt5.SubscribePacket)
        session.send(mqtt5.SubAckPacket(subscribe.packet_id, [mqtt5.SubAckReasonCode.NOT_AUTHORIZED]))
        session.send(mqtt5.PingRespPacket())  # processed after the SUBACK
        _until(lambda: transport.connected)
        session.nothing()
        assert transport.subscribed() == set()
    finally:
        transport.stop()
