"""The project's one MQTT v5 client layer: the `mqtt5` codec does the bytes, this package the rest.

Why our own: paho's per-packet costs (generic property objects, a syscall per packet, a wake-up
per packet, O(n) inflight scans) were most of the server's CPU per request. A `Connection` owns
one socket and one network thread (connection.py says how it reads, decodes, calls back and
writes). In short:

- every callback (on_message, on_connect, on_disconnect, on_delivery, on_done) runs in the
  network thread; publish/subscribe/unsubscribe/ack/close are thread safe;
- every QoS 1 publish returns a Delivery that completes exactly once: its PUBACK reason code, or
  the error that means none will come; SUBACK/UNSUBACK codes come per filter the same way;
- with ConnectOptions.reconnect (a Backoff) it reconnects forever, calls on_connect again
  (re-subscribe there) and then re-sends unacknowledged publishes; without, the first loss is final;
- manual_ack=True leaves the PUBACK of incoming QoS 1 messages to ack(message), valid only on
  the connection the message came on.

Import from here:

    from mlserving_common import mqtt
    conn = mqtt.Connection(mqtt.ConnectOptions("localhost", 1883, client_id=...), on_message=...)
"""

from mlserving_common.mqtt.acks import Delivery, SubscribeAck, UnsubscribeAck
from mlserving_common.mqtt.connection import Connection, Message, TopicFilter, subscription
from mlserving_common.mqtt.errors import (
    REFUSED,
    ConnectionClosed,
    ConnectionLost,
    ConnectRefused,
    MqttError,
    NotConnected,
    ProtocolError,
    reason_name,
)
from mlserving_common.mqtt.handshake import ConnAck
from mlserving_common.mqtt.options import Backoff, ConnectOptions

__all__ = [
    "REFUSED",
    "Backoff",
    "ConnAck",
    "ConnectOptions",
    "ConnectRefused",
    "Connection",
    "ConnectionClosed",
    "ConnectionLost",
    "Delivery",
    "Message",
    "MqttError",
    "NotConnected",
    "ProtocolError",
    "SubscribeAck",
    "TopicFilter",
    "UnsubscribeAck",
    "reason_name",
    "subscription",
]
