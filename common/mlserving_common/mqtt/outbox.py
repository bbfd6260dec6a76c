"""Outgoing QoS 1 bookkeeping: packet ids, the inflight window and the queue behind it.

Everything is O(1) per publish and per PUBACK: the inflight publishes are a dict by packet id
(insertion ordered, so a resend after reconnect keeps the original order) and those waiting for
a slot a FIFO deque. Packet ids cycle 1..65535 and skip ids still in use by a publish or by a
SUBSCRIBE/UNSUBSCRIBE awaiting its ack (MQTT v5.0 section 2.2.1: one id space per client).
Not thread safe: the Connection calls it under its lock.
"""

from __future__ import annotations

from collections import deque

import mqtt5

from mlserving_common.mqtt.acks import Delivery, _FilterAck
from mlserving_common.mqtt.errors import MqttError

_MAX_ID = 65535
_QOS1 = mqtt5.QoS.AT_LEAST_ONCE


class Outbox:
    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.window = max_inflight
        self.inflight: dict[int, Delivery] = {}
        self.waiting: deque[Delivery] = deque()
        self.acks: dict[int, _FilterAck] = {}
        self._last_id = 0

    def set_window(self, broker_receive_maximum: int) -> None:
        """Our window on this connection: also bounded by the broker's CONNACK Receive Maximum."""
        self.window = min(self.max_inflight, broker_receive_maximum)

    def next_id(self) -> int:
        if len(self.inflight) + len(self.acks) >= _MAX_ID:
            raise MqttError("all 65535 packet ids are awaiting an acknowledgement")
        packet_id = self._last_id
        inflight, acks = self.inflight, self.acks
        while True:
            packet_id = packet_id % _MAX_ID + 1
            if packet_id not in inflight and packet_id not in acks:
                self._last_id = packet_id
                return packet_id

    def add(self, delivery: Delivery, sending: bool) -> bytes | None:
        """The encoded PUBLISH if `delivery` may go out now, else None (it waits its turn)."""
        if sending and not self.waiting and len(self.inflight) < self.window:
            return self._enter(delivery)
        self.waiting.append(delivery)
        return None

    def _enter(self, delivery: Delivery) -> bytes:
        packet_id = self.next_id()
        delivery.packet_id = packet_id
        self.inflight[packet_id] = delivery
        return encode(delivery, False)

    def acked(self, packet_id: int) -> Delivery | None:
        return self.inflight.pop(packet_id, None)

    def refill(self, out: list[bytes]) -> None:
        """Move waiting publishes into free window slots, oldest first, appending their bytes to `out`."""
        waiting, inflight, window = self.waiting, self.inflight, self.window
        while waiting and len(inflight) < window:
            out.append(self._enter(waiting.popleft()))

    def resend(self, out: list[bytes]) -> None:
        """After a reconnect: every unacknowledged publish again, in order, same ids, DUP set."""
        for delivery in self.inflight.values():
            out.append(encode(delivery, True))

    def drain(self) -> list[Delivery]:
        """Forget every publish (the connection is gone for good); the caller fails them."""
        pending = list(self.inflight.values()) + list(self.waiting)
        self.inflight.clear()
        self.waiting.clear()
        return pending

    def drain_acks(self) -> list[_FilterAck]:
        pending = list(self.acks.values())
        self.acks.clear()
        return pending

    def __len__(self) -> int:
        return len(self.inflight) + len(self.waiting)


def encode(delivery: Delivery, duplicate: bool) -> bytes:
    return publish_packet(delivery.topic, delivery.fields, qos=_QOS1, packet_id=delivery.packet_id, duplicate=duplicate)


def publish_packet(
    topic: str,
    fields: tuple[bytes, bool, str | None, bytes | None, list[tuple[str, str]] | None, int | None],
    *,
    qos: mqtt5.QoS = mqtt5.QoS.AT_MOST_ONCE,
    packet_id: int | None = None,
    duplicate: bool = False,
) -> bytes:
    """One PUBLISH from a Delivery's fields: QoS 0 writes it once, QoS 1 (encode) again on each resend."""
    payload, retain, response_topic, correlation, user_properties, expiry = fields
    return mqtt5.PublishPacket(
        topic,
        payload,
        qos=qos,
        retain=retain,
        packet_id=packet_id,
        duplicate=duplicate,
        response_topic=response_topic,
        correlation_data=correlation,
        user_properties=user_properties,
        message_expiry_interval=expiry,
    ).write()
