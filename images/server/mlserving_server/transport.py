"""MQTT side of the server: one paho 2.2 client, MQTT v5, shared subscriptions, reconnects.

- clean_start=True and session expiry 0: Mosquitto 2.0 keeps round-robining shared messages
  to offline members that keep a session, so a replica that goes away must take its session along.
- TCP_NODELAY on our socket (paho never sets it): without it QoS 1 round trips fall ~8x (Nagle).
- Reconnects with backoff forever; subscriptions are re-made on every connect.
- Reads are buffered (`_FastClient`): stock paho issues three recv() calls per message.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mlserving_common import protocol
from mlserving_common.logs import event

from mlserving_server.config import ServerConfig
from mlserving_server.metrics import Metrics

log = logging.getLogger("mlserving.transport")
MessageHandler = Callable[[mqtt.MQTTMessage], None]


class _FastClient(mqtt.Client):
    """paho Client with a user-space read buffer and several packets handled per wake-up.

    Relies on paho 2.2 internals (_sock_recv, _packet_read); the version is pinned in pyproject.
    """

    READ_CHUNK = 65536
    PACKETS_PER_READ = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf = bytearray()  # bytes of the previous connection mean nothing on the next
        return super().reconnect()

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            data = super()._sock_recv(self.READ_CHUNK)  # BlockingIOError passes through
            if len(data) <= bufsize:
                return data
            buf += data
        chunk = bytes(buf[:bufsize])
        del buf[:bufsize]
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        for _ in range(self.PACKETS_PER_READ):
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN or self._sock is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._rbuf and self._sockpairW is not None:
            # Bytes left in our buffer do not make the socket readable: wake select() ourselves.
            try:
                self._sockpairW.send(b"0")
            except BlockingIOError:
                pass
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. websockets wrapper)
        pass


class Transport:
    """Connects, subscribes the tenants it is told to, hands messages over, publishes answers."""

    def __init__(self, config: ServerConfig, metrics: Metrics, on_message: MessageHandler, client_id: str = "") -> None:
        self._config = config
        self._metrics = metrics
        self._qos = config.qos
        self._topics = {name: t.request_topic for name, t in config.tenants.items()}
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._pending_sub: dict[int, str] = {}
        self._pending_unsub: set[int] = set()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._connected = False
        self._closing = False
        self._unacked = 0
        self.last_message = time.monotonic()

        client = _FastClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=True
        )
        if config.broker.username:
            client.username_pw_set(config.broker.username, config.broker.password)
        if config.broker.tls.enabled:
            client.tls_set(ca_certs=config.broker.tls.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_socket_open = _set_nodelay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_publish = self._on_publish
        client.on_message = self._wrap(on_message)
        client.enable_logger(logging.getLogger("mlserving.paho"))
        self._client = client

    def _wrap(self, handler: MessageHandler) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            self.last_message = time.monotonic()
            try:
                handler(message)
            except Exception:  # never let one message break the network loop
                log.exception("message handler failed")

        return on_message

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho keeps retrying until the broker answers."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        self._client.connect_async(
            self._config.broker.host,
            self._config.broker.port,
            keepalive=self._config.broker.keepalive,
            clean_start=True,
            properties=properties,
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._closing = True
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
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
        # Under our lock, so that a SUBACK racing back cannot find the mid unregistered.
        with self._lock:
            result, mid = self._client.subscribe(topic, qos=self._qos)
            if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._pending_sub[mid] = tenant

    def unsubscribe_all(self, timeout: float) -> bool:
        """Stop taking new requests (first step of a graceful stop); True once the broker confirmed."""
        with self._lock:
            self._wanted.clear()
            topics = [
                protocol.shared_subscription(self._topics[t], self._config.share_group) for t in self._subscribed
            ]
        if not topics or not self._connected:
            with self._lock:
                self._subscribed.clear()
            self._metrics.subscribed.set(0)
            return True
        with self._cond:
            result, mid = self._client.unsubscribe(topics)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                return False
            self._pending_unsub.add(mid)
            confirmed = self._cond.wait_for(lambda: mid not in self._pending_unsub, timeout)
            self._subscribed.clear()
        self._metrics.subscribed.set(0)
        return confirmed

    # -- publishing --------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        qos = self._qos
        if qos:
            with self._lock:
                self._unacked += 1
        info = self._client.publish(topic, payload, qos=qos, properties=properties)
        if qos and info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # Not queued at all (e.g. invalid topic): it will never be acknowledged.
            with self._lock:
                self._unacked -= 1
            event(log, "publish failed", logging.WARNING, topic=topic, rc=int(info.rc))

    def unacked(self) -> int:
        """QoS 1 answers handed to paho and not yet acknowledged by the broker."""
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

    # -- paho callbacks (network thread) ------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            event(log, "broker refused connection", logging.ERROR, reason=str(reason_code))
            return
        with self._lock:
            self._subscribed.clear()
            self._pending_sub.clear()
            wanted = sorted(self._wanted)
        self._set_connected(True)
        self._metrics.broker_connects.inc()
        self._metrics.subscribed.set(0)
        event(log, "broker connected", host=self._config.broker.host, port=self._config.broker.port)
        for tenant in wanted:
            self._subscribe_one(tenant)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._set_connected(False)
        with self._cond:
            self._subscribed.clear()
            self._pending_unsub.clear()  # nobody will confirm them now
            self._cond.notify_all()
        self._metrics.subscribed.set(0)
        level = logging.INFO if self._closing else logging.WARNING
        event(log, "broker disconnected", level, reason=str(reason_code))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._lock:
            tenant = self._pending_sub.pop(mid, None)
        if tenant is None:
            return
        if any(rc.is_failure for rc in reason_codes):
            event(log, "subscription refused", logging.ERROR, tenant=tenant, reason=str(reason_codes[0]))
            return
        with self._lock:
            if tenant in self._wanted:
                self._subscribed.add(tenant)
            count = len(self._subscribed)
        self._metrics.subscribed.set(count)
        event(log, "subscribed", tenant=tenant, topic=self._topics[tenant], group=self._config.share_group)

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._cond:
            self._pending_unsub.discard(mid)
            self._cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if self._qos:
            with self._lock:
                self._unacked -= 1


def reply_properties(correlation: bytes | None) -> Properties | None:
    """PUBLISH properties echoing a request's Correlation Data (None when it had none)."""
    if correlation is None:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    properties.CorrelationData = correlation
    return properties
