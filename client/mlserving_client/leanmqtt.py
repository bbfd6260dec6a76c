"""A minimal MQTT v5 client for the load generator: QoS 0/1 publish, one subscription, no reconnect.

Why not paho here: the load generator must outrun servers that themselves use paho, yet paho
costs about as much per request as a minimal echo server does (PUBLISH properties are parsed
through a generic, reflective Properties class; every packet is its own send() call and wakes
the network thread). This client does only what a load run needs: it writes pre-encoded
packets, parses just the Correlation Data of incoming PUBLISHes, and coalesces writes — all
PUBACKs and follow-up requests triggered by one read go out in one send(). A PUBACK with a
failure reason code (the broker refused a PUBLISH) is reported by packet id through
`on_refused`. The price: no TLS, no QoS 2, no reconnect (a broken connection fails the lane;
unanswered requests count as lost).
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
_U16 = struct.Struct("!H")

# Property identifier -> encoded size kind, enough to skip any property a broker may send.
_BYTE, _U16_KIND, _U32, _VARINT, _BINARY, _PAIR = range(6)
_PROPERTY_KIND = {
    1: _BYTE, 2: _U32, 3: _BINARY, 8: _BINARY, 9: _BINARY, 11: _VARINT, 17: _U32, 18: _BINARY, 19: _U16_KIND,
    21: _BINARY, 22: _BINARY, 23: _BYTE, 24: _U32, 25: _BYTE, 26: _BINARY, 28: _BINARY, 31: _BINARY,
    33: _U16_KIND, 34: _U16_KIND, 35: _U16_KIND, 36: _BYTE, 37: _BYTE, 38: _PAIR, 39: _U32, 40: _BYTE,
    41: _BYTE, 42: _BYTE,
}


class MqttProtocolError(ConnectionError):
    """The broker sent something this client cannot follow, or refused us."""


def varint(value: int) -> bytes:
    """MQTT Variable Byte Integer."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MqttProtocolError("malformed variable byte integer")


def utf8_field(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return _U16.pack(len(raw)) + raw


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def encode_connect(client_id: str, username: str | None, password: str | None, keepalive: int) -> bytes:
    """CONNECT, clean start, Session Expiry 0, Receive Maximum 65535."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    props = b"\x11" + struct.pack("!L", 0) + b"\x21" + _U16.pack(65535)
    body = utf8_field("MQTT") + b"\x05" + bytes([flags]) + _U16.pack(keepalive) + varint(len(props)) + props
    body += utf8_field(client_id)
    if username is not None:
        body += utf8_field(username)
    if password is not None:
        body += utf8_field(password)
    return packet(CONNECT << 4, body)


def encode_subscribe(packet_id: int, topic: str, qos: int) -> bytes:
    return packet((SUBSCRIBE << 4) | 0x02, _U16.pack(packet_id) + b"\x00" + utf8_field(topic) + bytes([qos]))


def publish_header(qos: int) -> int:
    return (PUBLISH << 4) | (qos << 1)


def _properties(buf: bytes | bytearray, pos: int, end: int) -> dict[int, object]:
    """Parse a property block into {identifier: value} (binary/strings as bytes)."""
    out: dict[int, object] = {}
    while pos < end:
        ident, pos = _read_varint(buf, pos)
        kind = _PROPERTY_KIND.get(ident)
        if kind is None:
            raise MqttProtocolError(f"unknown property {ident}")
        if kind == _BYTE:
            out[ident], pos = buf[pos], pos + 1
        elif kind == _U16_KIND:
            out[ident], pos = _U16.unpack_from(buf, pos)[0], pos + 2
        elif kind == _U32:
            out[ident], pos = struct.unpack_from("!L", buf, pos)[0], pos + 4
        elif kind == _VARINT:
            out[ident], pos = _read_varint(buf, pos)
        else:
            for _ in range(2 if kind == _PAIR else 1):
                n = _U16.unpack_from(buf, pos)[0]
                out[ident], pos = bytes(buf[pos + 2:pos + 2 + n]), pos + 2 + n
    return out


class LeanClient:
    """One MQTT v5 connection. `on_message(correlation, payload, now_ns)` and
    `on_refused(packet_id, reason_code)` (a PUBACK with reason code >= 0x80) run in the reader thread."""

    def __init__(self, host: str, port: int, client_id: str, username: str | None, password: str | None,
                 keepalive: int = 60) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.username, self.password, self.keepalive = username, password, keepalive
        self.failure: str | None = None
        self.receive_maximum = 65535
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._buf = bytearray()
        self._pending_out: list[bytes] = []
        self._reader: threading.Thread | None = None
        self._reader_ident = -1
        self._running = False
        self._last_send = time.monotonic()
        self._ids = itertools.count()
        self._published = 0  # QoS 1 PUBLISHes sent, under _send_lock
        self._acked = 0  # PUBACKs received, by the reader thread only
        self._window = threading.Event()  # set by the reader when PUBACKs arrive
        self.on_message: Callable[[bytes | None, bytes, int], None] | None = None
        self.on_refused: Callable[[int, int], None] | None = None

    # -- connection ----------------------------------------------------------------------------

    def connect(self, reply_topic: str, qos: int, timeout: float) -> None:
        """Connect, subscribe to `reply_topic`, then start the reader thread."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        sock.sendall(encode_connect(self.client_id, self.username, self.password, self.keepalive))
        kind, body = self._read_packet_blocking()
        if kind != CONNACK or len(body) < 2:
            raise MqttProtocolError(f"expected CONNACK, got packet type {kind}")
        if body[1] >= 0x80:
            raise MqttProtocolError(f"broker refused the connection: reason code 0x{body[1]:02x}")
        length, pos = _read_varint(body, 2)
        props = _properties(body, pos, pos + length)
        self.receive_maximum = int(props.get(33, 65535))  # type: ignore[call-overload]
        if 19 in props:  # Server Keep Alive overrides ours
            self.keepalive = int(props[19])  # type: ignore[call-overload]
        sock.sendall(encode_subscribe(1, reply_topic, qos))
        kind, body = self._read_packet_blocking()
        if kind != SUBACK:
            raise MqttProtocolError(f"expected SUBACK, got packet type {kind}")
        length, pos = _read_varint(body, 2)
        granted = body[pos + length:]
        if not granted or granted[0] >= 0x80:
            code = granted[0] if granted else -1
            raise MqttProtocolError(f"subscription to {reply_topic} refused: reason code 0x{code:02x}")
        sock.settimeout(None)
        self._running = True
        self._reader = threading.Thread(target=self._read_loop, name=f"lean-{self.client_id}", daemon=True)
        self._reader.start()

    def _read_packet_blocking(self) -> tuple[int, bytes]:
        assert self._sock is not None
        while True:
            parsed = self._split_one()
            if parsed is not None:
                return parsed
            data = self._sock.recv(65536)
            if not data:
                raise MqttProtocolError("broker closed the connection")
            self._buf += data

    def _split_one(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        try:
            length, pos = _read_varint(buf, 1)
        except IndexError:
            return None
        if len(buf) < pos + length:
            return None
        kind, body = buf[0] >> 4, bytes(buf[pos:pos + length])
        del buf[:pos + length]
        return kind, body

    def close(self) -> None:
        self._running = False
        if self._sock is not None:
            try:
                with self._send_lock:
                    self._sock.sendall(_DISCONNECT)
            except OSError:
                pass
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)

    # -- sending ---------------------------------------------------------------------------------

    def next_packet_id(self) -> int:
        """Packet ids 1..65535 (itertools.count is atomic under the GIL). Since at most Receive
        Maximum (<= 65535) QoS 1 messages are unacknowledged, no id is ever in flight twice."""
        return next(self._ids) % 65535 + 1

    @property
    def unacknowledged(self) -> int:
        return self._published - self._acked

    def publish(self, packet_bytes: bytes, qos: int) -> None:
        """Send one encoded PUBLISH. From the reader thread (a reply triggering the next request)
        it is queued and goes out with that read's PUBACKs."""
        if threading.get_ident() == self._reader_ident:
            self._pending_out.append(packet_bytes)
            if qos:
                with self._send_lock:
                    self._published += 1
            return
        self.publish_many([packet_bytes], qos)

    def publish_many(self, packets: list[bytes], qos: int) -> None:
        """Send encoded PUBLISHes in as few send() calls as the broker's Receive Maximum allows
        (it bounds unacknowledged QoS 1 messages; exceeding it gets us disconnected). Not for the
        reader thread."""
        start = 0
        while start < len(packets) and self._running:
            room = len(packets) - start
            if qos:
                room = min(room, self.receive_maximum - (self._published - self._acked))
                if room <= 0:
                    self._window.clear()
                    if self._published - self._acked >= self.receive_maximum:
                        self._window.wait(0.05)
                    continue
            chunk = packets[start:start + room]
            self._send(b"".join(chunk), len(chunk) if qos else 0)
            start += room

    def _send(self, data: bytes, publishes: int = 0) -> None:
        if self._sock is None or not self._running:
            return
        try:
            with self._send_lock:
                self._published += publishes
                self._sock.sendall(data)
                self._last_send = time.monotonic()
        except OSError as exc:
            self._fail(f"send failed: {exc}")

    def _fail(self, reason: str) -> None:
        if self.failure is None and self._running:
            self.failure = reason
        self._running = False

    # -- reading ---------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        self._reader_ident = threading.get_ident()
        sock = self._sock
        assert sock is not None
        sock.settimeout(max(1.0, self.keepalive / 4))
        buf = self._buf
        out = self._pending_out
        on_message = self.on_message
        on_refused = self.on_refused
        perf = time.perf_counter_ns
        while self._running:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = None
            except OSError as exc:
                self._fail(f"receive failed: {exc}")
                return
            if data is None:
                self._keepalive()
                continue
            if not data:
                self._fail("broker closed the connection")
                return
            now = perf()
            buf += data
            pos, end = 0, len(buf)
            while end - pos >= 2:
                first = buf[pos]
                # inline varint: remaining length
                length = shift = 0
                p = pos + 1
                while p < end:
                    byte = buf[p]
                    p += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                else:
                    break  # length bytes incomplete
                if end < p + length:
                    break
                kind = first >> 4
                if kind == PUBLISH:
                    qos = (first >> 1) & 0x03
                    tlen = (buf[p] << 8) | buf[p + 1]
                    q = p + 2 + tlen
                    if qos:
                        out.append(b"\x40\x02" + bytes(buf[q:q + 2]))
                        q += 2
                    plen, q = _read_varint(buf, q)
                    correlation = None
                    props_end = q + plen
                    if plen:
                        if buf[q] == 9:  # Correlation Data first: the common case
                            n = (buf[q + 1] << 8) | buf[q + 2]
                            correlation = bytes(buf[q + 3:q + 3 + n])
                        else:
                            value = _properties(buf, q, props_end).get(9)
                            correlation = value if isinstance(value, bytes) else None
                    if on_message is not None:
                        try:
                            on_message(correlation, bytes(buf[props_end:p + length]), now)
                        except Exception as exc:  # a bug in the handler must not pass for lost answers
                            self._fail(f"message handler failed: {exc!r}")
                            raise
                elif kind == PUBACK:
                    self._acked += 1
                    self._window.set()
                    # packet id, then a reason code unless it is 0 (success) with no properties
                    if length > 2 and buf[p + 2] >= 0x80 and on_refused is not None:
                        try:
                            on_refused((buf[p] << 8) | buf[p + 1], buf[p + 2])
                        except Exception as exc:
                            self._fail(f"refusal handler failed: {exc!r}")
                            raise
                elif kind == DISCONNECT:
                    reason = buf[p] if length else 0
                    self._fail(f"broker disconnected us: reason code 0x{reason:02x}")
                elif kind not in (PINGRESP, SUBACK):
                    self._fail(f"unexpected packet type {kind}")
                pos = p + length
            del buf[:pos]
            if out:
                data_out = b"".join(out)
                out.clear()
                self._send(data_out)
            elif time.monotonic() - self._last_send > self.keepalive / 2:
                self._keepalive()

    def _keepalive(self) -> None:
        if self.keepalive and time.monotonic() - self._last_send > self.keepalive / 2:
            self._send(_PINGREQ)
