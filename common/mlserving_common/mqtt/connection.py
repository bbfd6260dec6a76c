"""One MQTT v5 connection: a socket, a network thread, and the state that outlives reconnects.

The network thread does all reading, decoding (`framing`), callbacks and writing. Other threads
only queue encoded packets under `_lock` and wake it through a socketpair, once per batch (while
a wake-up is pending, more packets add no syscall). Packets queued by the network thread itself
(PUBACKs, answers published from a callback) need no wake-up: everything queued while a batch of
incoming packets is handled leaves in one send() after it. Reads take up to 64 KiB at a time and
decode every complete packet in them before writing. The package docstring says what users
may rely on.
"""

from __future__ import annotations

import dataclasses
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import mqtt5

from mlserving_common.logs import event
from mlserving_common.mqtt import framing
from mlserving_common.mqtt.acks import Delivery, SubscribeAck, UnsubscribeAck, _FilterAck, network_thread
from mlserving_common.mqtt.errors import (
    ConnectionClosed,
    ConnectionLost,
    MqttError,
    NotConnected,
    ProtocolError,
    reason_name,
)
from mlserving_common.mqtt.handshake import READ_CHUNK, ConnAck, open_connection
from mlserving_common.mqtt.options import ConnectOptions
from mlserving_common.mqtt.outbox import Outbox, publish_packet

log = logging.getLogger("mlserving.mqtt")

A = TypeVar("A", bound=_FilterAck)
Message = mqtt5.PublishPacket
TopicFilter = mqtt5.TopicFilter
#: Reads per wake-up at most, so that a flood of input cannot starve our own writes.
READS_PER_WAKE = 16

_PublishPacket, _PubAckPacket = mqtt5.PublishPacket, mqtt5.PubAckPacket
_SubAckPacket, _UnsubAckPacket = mqtt5.SubAckPacket, mqtt5.UnsubAckPacket
_PingRespPacket, _DisconnectPacket = mqtt5.PingRespPacket, mqtt5.DisconnectPacket
_PINGREQ = mqtt5.PingReqPacket().write()
_DISCONNECT = mqtt5.DisconnectPacket().write()


def subscription(pattern: str, qos: int = 1, no_local: bool = False) -> TopicFilter:
    """A topic filter at `qos` (0 or 1) with MQTT's default options: the retain flag is set only on
    messages sent because of the subscription (the retained backlog), not on live ones."""
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos} is not supported (0 or 1)")
    return mqtt5.TopicFilter(pattern, max_qos=mqtt5.QoS(qos), no_local=no_local, retain_as_published=False)


class Connection:
    """See the package docstring for the threading model and callback semantics."""

    def __init__(
        self,
        options: ConnectOptions,
        *,
        on_message: Callable[[Message], None] | None = None,
        on_connect: Callable[[ConnAck], None] | None = None,
        on_disconnect: Callable[[MqttError], None] | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.options = options
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_delivery = on_delivery
        self.manual_ack = manual_ack
        self._lock = threading.Lock()
        self._state = threading.Condition(self._lock)
        self._outbox = Outbox(options.max_inflight)
        self._out: list[bytes] = []  # encoded packets for the current connection, in order
        self._wake_pending = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._session_up = False  # CONNACK received: SUBSCRIBE/UNSUBSCRIBE may go out
        self._connected = False  # ... and publishes flow (after on_connect returned)
        self._closing = False
        self._dead: MqttError | None = None  # set when no connection will come any more
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._net_ident = -1
        self._unacked_in: dict[int, Message] = {}  # manual_ack: received QoS 1, not yet acknowledged
        self._rbuf = bytearray()
        self._keepalive = options.keepalive
        self._last_sent = self._last_received = 0.0
        self._ping_sent: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def connect(self, timeout: float | None = None) -> ConnAck:
        """Connect now (fail fast: raises ConnectRefused, ConnectionLost or TimeoutError), then run."""
        self._claim_start()
        options = self.options
        if timeout is not None:
            options = dataclasses.replace(options, connect_timeout=timeout)
        try:
            opened = open_connection(options)
        except BaseException:
            with self._lock:
                self._thread = None
            raise
        self._run_thread(opened)
        with self._state:  # until on_connect ran and publishes flow, or the connection died at once
            self._state.wait_for(lambda: self._connected or self._dead is not None)
            if not self._connected:
                raise self._dead_error()
        return opened[1]

    def start(self) -> None:
        """Connect in the network thread, retrying per options.reconnect; returns at once."""
        self._claim_start()
        self._run_thread(None)

    def _claim_start(self) -> None:
        with self._lock:
            if self._closing:
                raise ConnectionClosed("the connection was closed")
            if self._thread is not None:
                raise RuntimeError("connect() or start() was already called")
            self._thread = threading.current_thread()  # placeholder until the real thread exists

    def _run_thread(self, opened: tuple[socket.socket, ConnAck, bytes] | None) -> None:
        thread = threading.Thread(
            target=self._run, args=(opened,), name=f"mqtt-{self.options.client_id or 'client'}", daemon=True
        )
        with self._lock:
            self._thread = thread
        thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued, send DISCONNECT, stop the thread; pending acks fail. Idempotent."""
        with self._lock:
            if self._closing:
                thread = self._thread
                already = True
            else:
                self._closing = True
                thread = self._thread
                already = False
        if not already:
            self._stop.set()
            self._wake()
        if thread is not None and thread is not threading.current_thread() and thread.ident is not None:
            thread.join(timeout)
        if thread is None and not already:
            self._finish(ConnectionClosed("the connection was closed"))
        if thread is None or not thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_connected(self, timeout: float | None = None) -> bool:
        with self._state:
            return self._state.wait_for(lambda: self._connected or self._dead is not None, timeout) and self._connected

    def unacknowledged(self) -> int:
        """Our QoS 1 publishes not yet acknowledged (in flight or waiting for a window slot)."""
        with self._lock:
            return len(self._outbox)

    # -- operations (any thread) ---------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: list[tuple[str, str]] | None = None,
        message_expiry: int | None = None,
        context: object = None,
    ) -> Delivery:
        fields = (payload, retain, response_topic, correlation_data, user_properties, message_expiry)
        if qos == 1:
            delivery = Delivery(topic, 1, context, fields)
            with self._lock:
                if self._dead is not None:
                    raise self._dead_error()
                data = self._outbox.add(delivery, self._connected)
                wake = data is not None and self._queue(data)
            if wake:
                self._wake_send()
            return delivery
        if qos != 0:
            raise ValueError(f"QoS {qos} is not supported (0 or 1)")
        data = publish_packet(topic, fields)
        delivery = Delivery(topic, 0, context, None)
        with self._lock:
            if not self._connected:
                raise self._dead_error() if self._dead is not None else NotConnected("not connected to the broker")
            wake = self._queue(data)
        if wake:
            self._wake_send()
        delivery.complete(0)
        return delivery

    def subscribe(
        self,
        filters: str | TopicFilter | Sequence[str | TopicFilter],
        qos: int = 1,
        *,
        on_done: Callable[[SubscribeAck], None] | None = None,
    ) -> SubscribeAck:
        if isinstance(filters, (str, mqtt5.TopicFilter)):
            filters = [filters]
        topic_filters = [f if isinstance(f, mqtt5.TopicFilter) else subscription(f, qos) for f in filters]
        for f in topic_filters:
            if int(f.max_qos) > 1:
                raise ValueError(f"QoS {int(f.max_qos)} is not supported (0 or 1): {f.pattern}")
        return self._send_filter_packet(
            lambda packet_id: mqtt5.SubscribePacket(packet_id, topic_filters).write(),
            SubscribeAck([f.pattern for f in topic_filters], 0),
            on_done,
        )

    def unsubscribe(
        self, filters: str | Sequence[str], *, on_done: Callable[[UnsubscribeAck], None] | None = None
    ) -> UnsubscribeAck:
        patterns = [filters] if isinstance(filters, str) else list(filters)
        return self._send_filter_packet(
            lambda packet_id: mqtt5.UnsubscribePacket(packet_id, patterns).write(),
            UnsubscribeAck(patterns, 0),
            on_done,
        )

    def _send_filter_packet(self, encode: Callable[[int], bytes], ack: A, on_done: Any) -> A:
        ack.on_done = on_done
        with self._lock:
            if not self._session_up:
                raise self._dead_error() if self._dead is not None else NotConnected("not connected to the broker")
            ack.packet_id = self._outbox.next_id()
            self._outbox.acks[ack.packet_id] = ack
            wake = self._queue(encode(ack.packet_id))
        if wake:
            self._wake_send()
        return ack

    def ack(self, message: Message) -> bool:
        """PUBACK a QoS 1 message (manual_ack); False if already acked or from a dead connection."""
        packet_id = message.packet_id
        if packet_id is None:
            return False
        with self._lock:
            if self._unacked_in.get(packet_id) is not message:
                return False
            del self._unacked_in[packet_id]
            wake = self._queue(_PubAckPacket(packet_id).write())
        if wake:
            self._wake_send()
        return True

    def _dead_error(self) -> MqttError:
        if self._closing:
            return ConnectionClosed("the connection was closed")
        return NotConnected(f"not connected to the broker: {self._dead}")

    def _queue(self, data: bytes) -> bool:
        """Under _lock: queue bytes; True if the caller must wake the network thread (outside the lock)."""
        self._out.append(data)
        if self._wake_pending or threading.get_ident() == self._net_ident:
            return False
        self._wake_pending = True
        return True

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = True
        self._wake_send()

    def _wake_send(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):  # full (a wake-up is pending anyway) or closed
            pass

    # -- network thread ------------------------------------------------------------------------
    def _run(self, opened: tuple[socket.socket, ConnAck, bytes] | None) -> None:
        network_thread.active = True
        self._net_ident = threading.get_ident()
        backoff = self.options.reconnect
        delays = backoff.delays() if backoff is not None else None
        final: MqttError | None = None
        try:
            while not self._closing:
                if opened is None:
                    try:
                        opened = open_connection(self.options)
                    except (MqttError, TimeoutError) as exc:
                        error = exc if isinstance(exc, MqttError) else ConnectionLost(str(exc))
                        self._callback(self.on_disconnect, error)
                        if delays is None:
                            final = error
                            return
                        self._stop.wait(delays.next())
                        continue
                sock, connack, rest = opened
                opened = None
                if delays is not None:
                    delays.reset()
                error = self._serve(sock, connack, rest)
                if self._closing:
                    return
                self._lost(error, final=delays is None)
                if delays is None:
                    final = error
                    return
                self._stop.wait(delays.next())
        finally:
            self._finish(final or ConnectionClosed("the connection was closed"))

    def _serve(self, sock: socket.socket, connack: ConnAck, rest: bytes) -> MqttError:
        """Run one connection until it ends; the error that ended it."""
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        selector.register(sock, selectors.EVENT_READ)
        self._rbuf = bytearray()
        self._keepalive = connack.keepalive
        writer = _Writer(sock, selector)
        try:
            self._connected_to(connack)
            self._last_sent = self._last_received = time.monotonic()
            self._ping_sent = None
            if rest:
                self._feed(rest)
            self._flush(writer)
            wake_r = self._wake_r
            is_tls = isinstance(sock, ssl.SSLSocket)
            while not self._closing:
                events = selector.select(self._next_timer())
                for key, mask in events:
                    if key.fileobj is wake_r:
                        # Drain first, then clear: a wake-up byte sent after the drain stays for the
                        # next select(); cleared the other way round, a byte drained here could belong
                        # to a caller that found the flag cleared, and the next caller would find it set
                        # with no byte left to wake us (its packet stuck until something else woke us).
                        try:
                            wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                        with self._lock:
                            self._wake_pending = False
                    elif mask & selectors.EVENT_READ:
                        self._read(sock, is_tls)
                    if mask & selectors.EVENT_WRITE and key.fileobj is sock:
                        writer.resume()
                self._timers()
                self._flush(writer)
            self._flush(writer)
            writer.finish(_DISCONNECT, self.options.connect_timeout)
            return ConnectionClosed("the connection was closed")
        except MqttError as exc:
            return exc
        except (OSError, ValueError) as exc:
            return ConnectionLost(f"connection to {self.options.host}:{self.options.port} lost: {exc}")
        finally:
            with self._lock:
                self._session_up = self._connected = False
                self._out.clear()
                self._unacked_in.clear()
            selector.close()
            try:
                sock.close()
            except OSError:
                pass

    def _connected_to(self, connack: ConnAck) -> None:
        outbox = self._outbox
        with self._lock:
            self._unacked_in.clear()
            outbox.set_window(connack.receive_maximum)
            self._session_up = True
        self._callback(self.on_connect, connack)  # re-subscribe there: before any publish goes out
        with self._state:
            out = self._out
            outbox.resend(out)
            outbox.refill(out)
            self._connected = True
            self._state.notify_all()

    def _read(self, sock: socket.socket, is_tls: bool) -> None:
        for _ in range(READS_PER_WAKE):
            try:
                data = sock.recv(READ_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            if not data:
                raise ConnectionLost(f"{self.options.host}:{self.options.port} closed the connection")
            self._last_received = time.monotonic()
            self._feed(data)
            if len(data) < READ_CHUNK and not (is_tls and sock.pending()):  # type: ignore[attr-defined]
                return

    def _feed(self, data: bytes) -> None:
        buf = self._rbuf
        if buf:
            buf += data
            packets, used = framing.split(buf)
            del buf[:used]
        else:
            packets, used = framing.split(data)  # the common case: no copy
            if used < len(data):
                buf += data[used:]
        for packet in packets:
            self._dispatch(packet)

    def _dispatch(self, packet: Any) -> None:
        kind = type(packet)
        if kind is _PublishPacket:
            self._on_publish(packet)
        elif kind is _PubAckPacket:
            self._on_puback(packet)
        elif kind is _SubAckPacket or kind is _UnsubAckPacket:
            with self._lock:
                ack = self._outbox.acks.pop(packet.packet_id, None)
            if ack is not None:
                ack.complete(packet.reason_codes)
                if ack.on_done is not None:
                    self._callback(ack.on_done, ack)
        elif kind is _PingRespPacket:
            self._ping_sent = None
        elif kind is _DisconnectPacket:
            code = int(packet.reason_code)
            detail = f" ({packet.reason_str})" if packet.reason_str else ""
            raise ConnectionLost(f"the broker disconnected us: {reason_name('disconnect', code)}{detail}", code)
        else:
            raise ProtocolError(f"unexpected {kind.__name__} from the broker")

    def _on_publish(self, message: Message) -> None:
        qos = message.qos
        if qos == 1:
            packet_id: int = message.packet_id  # type: ignore[assignment]  # always set at QoS 1
            if self.manual_ack:
                self._unacked_in[packet_id] = message
                self._callback(self.on_message, message)
                return
            self._callback(self.on_message, message)
            with self._lock:
                self._out.append(_PubAckPacket(packet_id).write())
        elif qos == 0:
            self._callback(self.on_message, message)
        else:
            raise ProtocolError("QoS 2 PUBLISH from the broker: we never subscribe at QoS 2")

    def _on_puback(self, packet: mqtt5.PubAckPacket) -> None:
        with self._lock:
            delivery = self._outbox.acked(packet.packet_id)
            if delivery is None:
                return
            self._outbox.refill(self._out)
        delivery.complete(int(packet.reason_code))
        if self.on_delivery is not None:
            self._callback(self.on_delivery, delivery)

    def _callback(self, callback: Callable[[Any], None] | None, argument: Any) -> None:
        if callback is None:
            return
        try:
            callback(argument)
        except Exception:  # one bad callback must not end the connection
            log.exception("mqtt callback failed")

    def _flush(self, writer: _Writer) -> None:
        with self._lock:
            out = self._out
            if not out:
                return
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
        writer.write(data)
        self._last_sent = time.monotonic()

    # -- keepalive -----------------------------------------------------------------------------
    def _next_timer(self) -> float | None:
        keepalive = self._keepalive
        if not keepalive:
            return None
        now = time.monotonic()
        if self._ping_sent is not None:
            return max(0.0, self._ping_sent + keepalive - now)
        return max(0.0, min(self._last_sent, self._last_received) + keepalive - now)

    def _timers(self) -> None:
        keepalive = self._keepalive
        if not keepalive:
            return
        now = time.monotonic()
        if self._ping_sent is not None:
            if now - self._ping_sent >= keepalive:
                raise ConnectionLost(f"no PINGRESP from {self.options.host}:{self.options.port} in {keepalive} s")
        elif now - min(self._last_sent, self._last_received) >= keepalive:
            self._ping_sent = now
            with self._lock:
                self._out.append(_PINGREQ)

    # -- endings -------------------------------------------------------------------------------
    def _lost(self, error: MqttError, final: bool) -> None:
        """A connection ended: acks of this connection fail; publishes wait for the next one unless final."""
        with self._state:
            self._unacked_in.clear()
            acks = self._outbox.drain_acks()
            deliveries = self._outbox.drain() if final else []
            if final:
                self._dead = error
            self._state.notify_all()
        event(log, "mqtt connection lost", logging.INFO, reason=str(error))
        self._fail(acks, deliveries, error)
        self._callback(self.on_disconnect, error)

    def _finish(self, error: MqttError) -> None:
        with self._state:
            if self._dead is None:
                self._dead = error
            acks = self._outbox.drain_acks()
            deliveries = self._outbox.drain()
            self._state.notify_all()
            closing = self._closing
        self._fail(acks, deliveries, error)
        if closing:
            self._callback(self.on_disconnect, ConnectionClosed("the connection was closed"))

    def _fail(self, acks: list[_FilterAck], deliveries: list[Delivery], error: MqttError) -> None:
        for ack in acks:
            ack.fail(error)
            if ack.on_done is not None:
                self._callback(ack.on_done, ack)
        for delivery in deliveries:
            delivery.fail(error)
            if self.on_delivery is not None:
                self._callback(self.on_delivery, delivery)


class _Writer:
    """Non-blocking sends; a partial send keeps the rest and waits for the socket to be writable."""

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        self._sock = sock
        self._selector = selector
        self._pending = b""

    def write(self, data: bytes) -> None:
        if self._pending:
            self._pending += data
        else:
            self._send(data)

    def resume(self) -> None:
        data, self._pending = self._pending, b""
        if data:
            self._send(data)
        if not self._pending:
            self._selector.modify(self._sock, selectors.EVENT_READ)

    def _send(self, data: bytes) -> None:
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        if sent < len(data):
            if not self._pending:
                self._selector.modify(self._sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            self._pending = data[sent:]

    def finish(self, last: bytes, timeout: float) -> None:
        """Blocking: what is pending, then `last` (DISCONNECT), within `timeout`."""
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(self._pending + last)
        except OSError:
            pass
