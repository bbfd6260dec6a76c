"""MQTT side of the server: one paho 2.2 client, MQTT v5, shared subscriptions, reconnects.

- clean_start=True and session expiry 0: Mosquitto 2.0 keeps round-robining shared messages
  to offline members that keep a session, so a replica that goes away must take its session along.
- TCP_NODELAY on our socket (paho never sets it): without it QoS 1 round trips fall ~8x (Nagle).
- Reconnects with backoff forever; subscriptions are re-made on every connect.
- Flow control (docs/server.md, "Overload"): CONNECT carries Receive Maximum
  (limits.receive_maximum), the broker's window of unacknowledged requests in flight to us, and
  requests are acknowledged (paho's public manual_ack / ack()) only once the pipeline took
  them: queued, or answered (e.g. `overloaded`). While limits.max_outgoing answers wait for the
  broker's PUBACK, new requests are held unacknowledged and taken, oldest first, as PUBACKs come
  in, so answers never pile up beyond that bound. (Mosquitto 2.0.11 delivers past the window
  when acknowledgements are held back, see `_receive`: what is held is then bounded by the
  broker's per-session queue limits, at the cost of a payload each, not of an answer.)
- `_FastClient` trims paho's per-message overhead; see its docstring. In profiles under load
  it cut the server's CPU per request by more than half.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mlserving_common import protocol
from mlserving_common.logs import event

from mlserving_server.config import ServerConfig
from mlserving_server.metrics import Metrics

log = logging.getLogger("mlserving.transport")
_MS_QUEUED = mqtt.mqtt_ms_queued
_MS_WAIT_PUBACK = mqtt.mqtt_ms_wait_for_puback
_MS_WAIT_PUBREC = mqtt.mqtt_ms_wait_for_pubrec
_PUBLISH, _PUBACK, _DISCONNECT = mqtt.PUBLISH, mqtt.PUBACK, mqtt.DISCONNECT
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)
#: QoS 1 answers in flight to the broker at most. Mosquitto acknowledges a QoS 1 PUBLISH as soon
#: as it has queued it, so its own CONNACK Receive Maximum never runs out for us.
MAX_INFLIGHT = 1000
#: handler(topic, payload, response topic, correlation data), called in the network thread.
MessageHandler = Callable[[str, bytes, "str | None", "bytes | None"], None]
#: fast_handler(topic, payload, response topic, correlation data, packet id, QoS).
RawHandler = Callable[[str, bytes, "str | None", "bytes | None", int, int], None]


class _FastClient(mqtt.Client):
    """paho Client minus the per-message costs that dominated our profiles.

    - reads: one recv() of up to 64 KiB feeds many packets (stock: 3 syscalls per packet), and
      up to PACKETS_PER_READ packets are handled per select() wake-up;
    - PUBLISH decoding straight into (topic, payload, response topic, correlation) for QoS 0/1;
      PUBACKs without properties skip paho's ReasonCode/Properties objects;
    - writes: consecutive packets go out in one send(); the wake-up socketpair is written once
      per batch of packets, and never from the network thread itself;
    - the inflight window is refilled from a queue of waiting messages instead of a scan of
      every outgoing message per PUBACK (O(n^2) under load in stock paho);
    - at most MAX_OUTSTANDING QoS>0 messages are handed to paho: packet ids are 16 bits, and
      paho refuses (MQTT_ERR_QUEUE_SIZE, the answer is lost) a publish whose id is still in use,
      which a flood of requests answered faster than the broker acknowledges reaches. Later ones
      wait in order in `_overflow` and enter as PUBACKs free ids. `_overflow` is bounded by
      configuration, not load: Transport stops taking requests beyond limits.max_outgoing
      unacknowledged answers, so at most max_outgoing plus what the tenants' queues (max_pending
      each) and one batch held can be waiting in all.
    Each falls back to paho's own code for anything unusual (QoS 2, topic aliases, external
    event loops). Relies on paho 2.2 internals; the version is pinned in pyproject.toml and
    tests/unit/test_server_transport.py checks the codec against paho's.
    """

    READ_CHUNK = 65536
    PACKETS_PER_READ = 512
    COALESCE_PACKETS = 256
    MAX_OUTSTANDING = 60000  # < 65535 packet ids

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()
        self._queued_mids: deque[int] = deque()
        self._overflow: deque[tuple[tuple[Any, ...], dict[str, Any]]] = deque()
        self._wake_pending = False
        #: Called as handler(topic, payload, response_topic, correlation, mid, qos) for decoded PUBLISHes.
        self.fast_handler: RawHandler | None = None

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf = bytearray()  # bytes of the previous connection mean nothing on the next
        try:
            return super().reconnect()
        finally:
            self._requeue_from_states()

    def _requeue_from_states(self) -> None:
        with self._out_message_mutex:
            self._queued_mids = deque(
                mid for mid, m in self._out_messages.items() if m.state == _MS_QUEUED and m.qos > 0
            )

    def publish(self, *args: Any, **kwargs: Any) -> mqtt.MQTTMessageInfo:
        # Same reentrant lock paho holds around _update_inflight, so the two cannot interleave.
        with self._out_message_mutex:
            if kwargs.get("qos", 0) and (self._overflow or len(self._out_messages) >= self.MAX_OUTSTANDING):
                self._overflow.append((args, kwargs))
                return mqtt.MQTTMessageInfo(0)  # accepted; it gets its packet id later
            return self._publish_now(args, kwargs)

    def _publish_now(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> mqtt.MQTTMessageInfo:
        info = super().publish(*args, **kwargs)
        message = self._out_messages.get(info.mid)
        if message is not None and message.state == _MS_QUEUED:
            self._queued_mids.append(info.mid)  # waits for an inflight slot
        return info

    def _update_inflight(self) -> MQTTErrorCode:
        """paho's version scans every outgoing message on every PUBACK (O(n) each, 16-26 % of
        our CPU in profiles under load); this one visits only the messages waiting for a slot."""
        queued = self._queued_mids
        while queued and self._inflight_messages < self._max_inflight_messages:
            message = self._out_messages.get(queued.popleft())
            if message is None or message.state != _MS_QUEUED:
                continue
            self._inflight_messages += 1
            message.state = _MS_WAIT_PUBACK if message.qos == 1 else _MS_WAIT_PUBREC
            rc = self._send_publish(
                message.mid,
                message.topic.encode("utf-8"),
                message.payload,
                message.qos,
                message.retain,
                message.dup,
                properties=message.properties,
            )
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _do_on_publish(self, mid: int, reason_code: ReasonCode, properties: Properties) -> MQTTErrorCode:
        rc = super()._do_on_publish(mid, reason_code, properties)
        with self._out_message_mutex:  # reentrant: PUBACK handling already holds it
            while self._overflow and len(self._out_messages) < self.MAX_OUTSTANDING:
                self._publish_now(*self._overflow.popleft())
        return rc

    # -- writes: fewer syscalls ---------------------------------------------------------------
    def _packet_queue(
        self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: Any = None
    ) -> MQTTErrorCode:
        """Queue a packet; wake the network thread only once per batch of packets.

        Stock paho writes one byte to its wake-up socketpair for every packet, even from the
        network thread itself (every PUBACK we send).
        """
        if self._thread is None or self._on_socket_register_write is not None:
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append(
            {"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet), "packet": packet, "info": info}
        )
        if not self._wake_pending and threading.get_ident() != self._thread.ident:
            self._wake_pending = True
            if self._sockpairW is not None:
                try:
                    self._sockpairW.send(b"0")
                except BlockingIOError:
                    pass
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_write(self) -> MQTTErrorCode:
        self._wake_pending = False  # before draining: a packet queued after this wakes us again
        return super().loop_write()

    def _packet_write(self) -> MQTTErrorCode:
        """Send consecutive PUBACK / QoS>0 PUBLISH packets with one send() instead of one each."""
        out = self._out_packet
        if len(out) > 1:
            parts = []
            while out and len(parts) < self.COALESCE_PACKETS:
                head = out[0]
                kind = head["command"] & 0xF0
                if (kind == _PUBLISH and head["qos"] == 0) or kind == _DISCONNECT:
                    break  # these need paho's per-packet bookkeeping after the write
                out.popleft()
                parts.append(head)
            if len(parts) == 1:
                out.appendleft(parts[0])
            elif parts:
                data = b"".join(bytes(p["packet"][p["pos"] :]) if p["pos"] else p["packet"] for p in parts)
                out.appendleft(
                    {"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0, "to_process": len(data), "packet": data, "info": None}
                )
        return super()._packet_write()

    # -- reads: fewer syscalls and fewer objects ------------------------------------------------
    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd == "PUBACK" and len(packet) == 2:  # success, no properties: the common case
            mid = (packet[0] << 8) | packet[1]
            with self._out_message_mutex:
                if mid in self._out_messages:
                    return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)

    def _handle_publish(self) -> MQTTErrorCode:
        """Decode QoS 0/1 PUBLISH packets straight into handler arguments.

        paho builds a Properties object, an MQTTMessage and several struct formats per message
        (about a fifth of our CPU). We need only topic, payload, Response Topic and Correlation
        Data. Anything unusual (QoS 2, topic aliases, unknown properties, bad UTF-8) takes
        paho's own path.
        """
        handler = self.fast_handler
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if handler is None or qos == 2:
            return super()._handle_publish()
        try:
            decoded = _decode_publish(self._in_packet["packet"], qos)
        except (IndexError, UnicodeDecodeError, ValueError):
            decoded = None
        if decoded is None:
            return super()._handle_publish()
        topic, mid, payload, response_topic, correlation = decoded
        handler(topic, payload, response_topic, correlation, mid, qos)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # We use one on_message and no per-topic callbacks: skip paho's topic matcher.
        on_message = self.on_message
        if on_message is not None:
            on_message(self, self._userdata, message)

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


# Lengths of the fixed-size PUBLISH properties we skip; see MQTT v5.0 section 3.3.2.3.
_FIXED_PROPERTIES = {0x01: 1, 0x02: 4}  # Payload Format Indicator, Message Expiry Interval
_STRING_PROPERTIES = {0x03}  # Content Type
_RESPONSE_TOPIC, _CORRELATION_DATA, _USER_PROPERTY, _SUBSCRIPTION_ID = 0x08, 0x09, 0x26, 0x0B


def _read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    for _ in range(4):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("variable byte integer longer than 4 bytes")


def _decode_publish(
    packet: bytes | bytearray, qos: int
) -> tuple[str, int, bytes, str | None, bytes | None] | None:
    """(topic, mid, payload, response topic, correlation data) of an MQTT v5 PUBLISH body,
    or None when the packet needs paho's full decoder (e.g. a topic alias)."""
    topic_length = (packet[0] << 8) | packet[1]
    pos = 2 + topic_length
    if pos > len(packet) or topic_length == 0:
        return None
    topic = bytes(packet[2:pos]).decode("utf-8")
    mid = 0
    if qos:
        mid = (packet[pos] << 8) | packet[pos + 1]
        pos += 2
    length, pos = _read_varint(packet, pos)
    end = pos + length
    if end > len(packet):
        return None
    response_topic = correlation = None
    while pos < end:
        ident = packet[pos]
        pos += 1
        if ident == _RESPONSE_TOPIC or ident == _CORRELATION_DATA or ident in _STRING_PROPERTIES:
            size = (packet[pos] << 8) | packet[pos + 1]
            value = bytes(packet[pos + 2 : pos + 2 + size])
            pos += 2 + size
            if ident == _RESPONSE_TOPIC:
                response_topic = value.decode("utf-8")
            elif ident == _CORRELATION_DATA:
                correlation = value
        elif ident in _FIXED_PROPERTIES:
            pos += _FIXED_PROPERTIES[ident]
        elif ident == _USER_PROPERTY:
            for _ in range(2):
                size = (packet[pos] << 8) | packet[pos + 1]
                pos += 2 + size
        elif ident == _SUBSCRIPTION_ID:
            _, pos = _read_varint(packet, pos)
        else:
            return None  # topic alias or something unexpected: let paho decide
    if pos != end:
        return None
    return topic, mid, bytes(packet[end:]), response_topic, correlation


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
        limits = config.limits
        self._receive_maximum = limits.receive_maximum
        self._max_outgoing = limits.max_outgoing if self._qos else 0  # QoS 0 answers are never acknowledged
        #: Requests received while max_outgoing answers were unacknowledged: (connection, mid, qos, message).
        self._held: deque[tuple[int, int, int, tuple[str, bytes, str | None, bytes | None]]] = deque()
        self._connection = 0  # incremented on every connect: a held packet id is only valid on its own
        self._handler = self._wrap(on_message)
        metrics.track_transport(held=self.held, outgoing=self.unacked)

        client = _FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=True,
            manual_ack=True,  # acknowledged once taken, see _receive
        )
        if config.broker.username:
            client.username_pw_set(config.broker.username, config.broker.password)
        if config.broker.tls.enabled:
            client.tls_set(ca_certs=config.broker.tls.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_socket_open = _set_nodelay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_publish = self._on_publish
        client.fast_handler = self._receive
        client.on_message = lambda c, u, m: self._receive(
            m.topic,
            m.payload,
            getattr(m.properties, "ResponseTopic", None),
            getattr(m.properties, "CorrelationData", None),
            m.mid,
            m.qos,
        )
        self._client = client

    def _wrap(self, handler: MessageHandler) -> MessageHandler:
        def on_message(topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> None:
            self.last_message = time.monotonic()
            try:
                handler(topic, payload, response_topic, correlation)
            except Exception:  # never let one message break the network loop
                log.exception("message handler failed")

        return on_message

    # -- flow control (network thread) ----------------------------------------------------------
    def _receive(
        self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None, mid: int, qos: int
    ) -> None:
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
            self._held.append((self._connection, mid, qos, (topic, payload, response_topic, correlation)))
            return
        self._handler(topic, payload, response_topic, correlation)
        if qos:
            self._client.ack(mid, qos)

    def _take_held(self) -> None:
        """Take held requests, oldest first, while fewer than max_outgoing answers await a PUBACK."""
        held = self._held
        while held and self._unacked < self._max_outgoing:
            connection, mid, qos, message = held.popleft()
            self._handler(*message)
            if qos and connection == self._connection:  # else: that packet id died with its connection
                self._client.ack(mid, qos)

    def held(self) -> int:
        """Requests received and not yet taken (nor acknowledged) because answers backed up."""
        return len(self._held)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho keeps retrying until the broker answers."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        properties.ReceiveMaximum = self._receive_maximum  # the broker's in-flight window to us
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
    def publish(self, topic: str, payload: bytes, properties: Any = None) -> None:
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
        self._connection += 1
        self._set_connected(True)
        self._metrics.broker_connects.inc()
        self._metrics.subscribed.set(0)
        event(log, "broker connected", host=self._config.broker.host, port=self._config.broker.port)
        for tenant in wanted:
            self._subscribe_one(tenant)
        if self._held and self._unacked < self._max_outgoing:
            self._take_held()

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
            if self._held and self._unacked < self._max_outgoing:
                self._take_held()


class PackedProperties:
    """Pre-serialised PUBLISH properties: paho only calls `pack()` on what it is given.

    Building paho's Properties object for every answer cost 13 % of the server's CPU in a
    profile; the Correlation Data property is just bytes.
    """

    __slots__ = ("_packed", "CorrelationData")

    def __init__(self, correlation: bytes) -> None:
        self.CorrelationData = correlation
        body = b"\x09" + len(correlation).to_bytes(2, "big") + correlation  # 0x09 = Correlation Data
        self._packed = _varint(len(body)) + body

    def pack(self) -> bytes:
        return self._packed


def _varint(value: int) -> bytes:
    """MQTT Variable Byte Integer."""
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (128 if value else 0))
        if not value:
            return bytes(out)


def reply_properties(correlation: bytes | None) -> PackedProperties | None:
    """PUBLISH properties echoing a request's Correlation Data (None when it had none)."""
    if correlation is None:
        return None
    return PackedProperties(correlation)
