"""MQTT side of the server: one mlserving_common.mqtt Connection, shared subscriptions, reconnects.

- clean_start=True and session expiry 0: Mosquitto 2.0 keeps round-robining shared messages
  to offline members that keep a session, so a replica that goes away must take its session along.
- Reconnects with backoff forever; subscriptions are re-made on every connect (before any queued
  answer goes out again).
- Flow control (docs/server.md, "Overload"): CONNECT carries Receive Maximum
  (limits.receive_maximum), the broker's window of unacknowledged requests in flight to us, and
  requests are acknowledged (manual ack) only once the pipeline took them: queued, or answered
  (e.g. `overloaded`). While limits.max_outgoing answers wait for the broker's PUBACK, new requests
  are held unacknowledged and taken, oldest first, as PUBACKs come in, so answers never pile up
  beyond that bound. (Mosquitto 2.0.11 delivers past the window when acknowledgements are held
  back, see `_receive`: what is held is then bounded by the broker's per-session queue limits, at
  the cost of a payload each, not of an answer.)
- Speed (TCP_NODELAY, 64 KiB reads, coalesced writes, O(1) inflight bookkeeping, packet ids past
  65,535 outstanding answers) is the connection layer's; this module only decides when to take
  and acknowledge a request.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from mlserving_common import mqtt, protocol
from mlserving_common.logs import event
from mlserving_server.config import ServerConfig
from mlserving_server.metrics import Metrics

log = logging.getLogger("mlserving.transport")
#: QoS 1 answers in flight to the broker at most; more wait, in order, in the connection.
#: Mosquitto acknowledges a QoS 1 PUBLISH as soon as it has queued it, so this rarely fills.
MAX_INFLIGHT = 1000
#: handler(topic, payload, response topic, correlation data), called in the network thread.
MessageHandler = Callable[[str, bytes, "str | None", "bytes | None"], None]


def connect_options(config: ServerConfig, client_id: str) -> mqtt.ConnectOptions:
    """How a server connects: its own session only while connected, Receive Maximum from limits."""
    broker = config.broker
    context = None
    if broker.tls.enabled:
        context = ssl.create_default_context(cafile=broker.tls.ca_file)  # no ca_file: the system's CAs
    return mqtt.ConnectOptions(
        broker.host,
        broker.port,
        client_id=client_id,
        username=broker.username or None,
        password=broker.password if broker.username else None,
        ssl_context=context,
        keepalive=broker.keepalive,
        clean_start=True,
        session_expiry=0,
        receive_maximum=config.limits.receive_maximum,
        max_inflight=MAX_INFLIGHT,
        reconnect=mqtt.Backoff(min_delay=1, max_delay=10),
    )


class Transport:
    """Connects, subscribes the tenants it is told to, hands messages over, publishes answers."""

    def __init__(self, config: ServerConfig, metrics: Metrics, on_message: MessageHandler, client_id: str = "") -> None:
        self._config = config
        self._metrics = metrics
        self._qos = config.qos
        self._topics = {name: t.request_topic for name, t in config.tenants.items()}
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._lock = threading.Lock()
        self._connected = False
        self._closing = False
        self._unacked = 0
        self.last_message = time.monotonic()
        self._max_outgoing = config.limits.max_outgoing if self._qos else 0  # QoS 0 answers are never acknowledged
        #: Requests received while max_outgoing answers were unacknowledged, oldest first.
        self._held: deque[mqtt.Message] = deque()
        self._handler = self._wrap(on_message)
        metrics.track_transport(held=self.held, outgoing=self.unacked)
        self._connection = mqtt.Connection(
            connect_options(config, client_id),
            on_message=self._receive,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_delivery=self._on_delivery,
            manual_ack=True,  # acknowledged once taken, see _receive
        )

    def _wrap(self, handler: MessageHandler) -> Callable[[mqtt.Message], None]:
        def on_message(message: mqtt.Message) -> None:
            try:
                handler(message.topic, message.payload, message.response_topic, message.correlation_data)
            except Exception:  # never let one message break the network loop
                log.exception("message handler failed")

        return on_message

    # -- flow control (network thread) ----------------------------------------------------------
    def _receive(self, message: mqtt.Message) -> None:
        """Hand a request to the pipeline and acknowledge it, or hold it while answers back up."""
        self.last_message = time.monotonic()
        if self._held and self._unacked < self._max_outgoing:
            self._take_held()  # first come, first taken
        if self._max_outgoing and (self._held or self._unacked >= self._max_outgoing):
            # Unacknowledged, it keeps one of the broker's Receive Maximum slots: the broker keeps
            # the rest of the backlog itself. Mosquitto 2.0.11 overfills that window when the
            # oldest in-flight message is acknowledged while others wait (db__message_delete_outgoing
            # refills by the count of messages ahead of the one acknowledged): measured, 4,417
            # held with Receive Maximum 16. Acknowledging newest first did not keep it either
            # in a flood (38,018 held) and made the broker's linear search of its in-flight list
            # per PUBACK far slower (54,364 answers came too late). So `held` is bounded by the
            # broker's per-session queue limits
            # (max_queued_messages / max_queued_bytes); a held request costs its payload, not an
            # answer's worth.
            self._held.append(message)
            return
        self._handler(message)
        self._connection.ack(message)  # no-op at QoS 0

    def _take_held(self) -> None:
        """Take held requests, oldest first, while fewer than max_outgoing answers await a PUBACK."""
        held = self._held
        while held and self._unacked < self._max_outgoing:
            message = held.popleft()
            self._handler(message)
            self._connection.ack(message)  # no-op if its connection is gone: its packet id died with it

    def held(self) -> int:
        """Requests received and not yet taken (nor acknowledged) because answers backed up."""
        return len(self._held)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; keeps retrying until the broker answers."""
        self._connection.start()

    def stop(self) -> None:
        self._closing = True
        self._connection.close()
        self._set_connected(False)

    # -- subscriptions -----------------------------------------------------------------------
    def subscribe(self, tenants: Iterable[str]) -> None:
        """Serve these tenants from now on (and after every reconnect)."""
        with self._lock:
            new = [t for t in tenants if t not in self._wanted]
            self._wanted.update(new)
            connected = self._connected
        if connected:
            for tenant in new:
                self._subscribe_one(tenant)

    def _subscribe_one(self, tenant: str) -> None:
        topic = protocol.shared_subscription(self._topics[tenant], self._config.share_group)
        try:
            self._connection.subscribe(topic, self._qos, on_done=lambda ack: self._on_subscribe(tenant, ack))
        except mqtt.NotConnected:
            pass  # subscribed again on the next connect

    def unsubscribe_all(self, timeout: float) -> bool:
        """Stop taking new requests (first step of a graceful stop); True once the broker confirmed."""
        with self._lock:
            self._wanted.clear()
            topics = [protocol.shared_subscription(self._topics[t], self._config.share_group) for t in self._subscribed]
        confirmed = True
        if topics and self._connected:
            try:
                self._connection.unsubscribe(topics).wait(timeout)
            except TimeoutError:
                confirmed = False
            except mqtt.NotConnected:
                confirmed = False
            except mqtt.MqttError:
                pass  # the connection went, and with session expiry 0 its subscriptions with it
        with self._lock:
            self._subscribed.clear()
        self._metrics.subscribed.set(0)
        return confirmed

    # -- publishing --------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, correlation: bytes | None = None) -> None:
        """Publish an answer (echoing the request's Correlation Data) or a record, at the configured QoS.

        At QoS 1 it is queued while disconnected and goes out after the reconnect; at QoS 0 it is
        dropped then, as the QoS says.
        """
        qos = self._qos
        if qos:
            with self._lock:
                self._unacked += 1
        try:
            self._connection.publish(topic, payload, qos, correlation_data=correlation)
        except (mqtt.MqttError, ValueError) as exc:
            if qos:  # never sent: it will never be acknowledged
                with self._lock:
                    self._unacked -= 1
            if not isinstance(exc, mqtt.NotConnected):  # QoS 0 while disconnected, or stopping: expected
                event(log, "publish failed", logging.WARNING, topic=topic, reason=str(exc))

    def unacked(self) -> int:
        """QoS 1 answers handed to the connection and not yet acknowledged by the broker."""
        return self._unacked

    # -- state -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    def subscribed(self) -> set[str]:
        with self._lock:
            return set(self._subscribed)

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self._metrics.broker_connected.set(1 if value else 0)

    # -- connection callbacks (network thread) --------------------------------------------------
    def _on_connect(self, ack: mqtt.ConnAck) -> None:
        with self._lock:
            self._subscribed.clear()
            wanted = sorted(self._wanted)
        self._set_connected(True)
        self._metrics.broker_connects.inc()
        self._metrics.subscribed.set(0)
        event(log, "broker connected", host=self._config.broker.host, port=self._config.broker.port)
        for tenant in wanted:
            self._subscribe_one(tenant)
        if self._held and self._unacked < self._max_outgoing:
            self._take_held()

    def _on_disconnect(self, error: mqtt.MqttError) -> None:
        if isinstance(error, mqtt.ConnectRefused):
            event(log, "broker refused connection", logging.ERROR, reason=str(error))
            return
        if not self._connected and not self._closing:
            return  # an attempt that found no broker: retried with backoff, nothing changed
        self._set_connected(False)
        with self._lock:
            self._subscribed.clear()
        self._metrics.subscribed.set(0)
        level = logging.INFO if self._closing else logging.WARNING
        event(log, "broker disconnected", level, reason=str(error))

    def _on_subscribe(self, tenant: str, ack: mqtt.SubscribeAck) -> None:
        if ack.error is not None:
            return  # its connection went; subscribed again on the next one
        if ack.refused:
            reason = mqtt.reason_name("suback", (ack.reason_codes or [0x80])[0])
            event(log, "subscription refused", logging.ERROR, tenant=tenant, reason=reason)
            return
        with self._lock:
            if tenant in self._wanted:
                self._subscribed.add(tenant)
            count = len(self._subscribed)
        self._metrics.subscribed.set(count)
        event(log, "subscribed", tenant=tenant, topic=self._topics[tenant], group=self._config.share_group)

    def _on_delivery(self, delivery: mqtt.Delivery) -> None:
        if self._qos:
            with self._lock:
                self._unacked -= 1
            if self._held and self._unacked < self._max_outgoing:
                self._take_held()
