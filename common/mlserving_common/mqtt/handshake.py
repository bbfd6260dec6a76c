"""Opening one connection: TCP (TCP_NODELAY), optional TLS, CONNECT, and the broker's CONNACK.

Blocking, with the options' connect_timeout; the network thread takes over the socket after.
TCP_NODELAY because without it small QoS 1 packets wait for delayed ACKs (Nagle): round trips
fall ~8x.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import mqtt5

from mlserving_common.mqtt import framing
from mlserving_common.mqtt.errors import REFUSED, ConnectionLost, ConnectRefused, MqttError, ProtocolError
from mlserving_common.mqtt.options import ConnectOptions

READ_CHUNK = 65536


@dataclass(frozen=True)
class ConnAck:
    """What the broker granted: read by on_connect to know whether the session survived."""

    session_present: bool
    receive_maximum: int
    keepalive: int
    assigned_client_id: str | None
    reason_code: int = 0


def open_connection(options: ConnectOptions) -> tuple[socket.socket, ConnAck, bytes]:
    """A connected socket (non-blocking), the CONNACK, and any bytes that came after it."""
    where = f"{options.host}:{options.port}"
    deadline = time.monotonic() + options.connect_timeout
    try:
        sock = socket.create_connection((options.host, options.port), timeout=options.connect_timeout)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to {where}: {exc}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = options.tls_context()
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=options.host)
        sock.sendall(_connect_packet(options))
        connack, rest = _read_connack(sock, deadline, where)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError) and not isinstance(exc, (MqttError, TimeoutError)):
            raise ConnectionLost(f"connection to {where} failed: {exc}") from None
        raise
    sock.setblocking(False)
    keepalive = connack.server_keep_alive if connack.server_keep_alive is not None else options.keepalive
    granted = ConnAck(
        session_present=bool(connack.session_present),
        receive_maximum=int(connack.receive_max),
        keepalive=int(keepalive),
        assigned_client_id=connack.assigned_client_id,
    )
    return sock, granted, rest


def _connect_packet(options: ConnectOptions) -> bytes:
    return mqtt5.ConnectPacket(
        options.client_id,
        username=options.username,
        password=options.password.encode() if options.password is not None else None,
        clean_start=options.clean_start,
        keep_alive=options.keepalive,
        session_expiry_interval=options.session_expiry,
        receive_max=options.receive_maximum,
    ).write()


def _read_connack(sock: socket.socket, deadline: float, where: str) -> tuple[mqtt5.ConnAckPacket, bytes]:
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no CONNACK from {where} in time")
        sock.settimeout(remaining)
        try:
            data = sock.recv(READ_CHUNK)
        except TimeoutError:
            raise TimeoutError(f"no CONNACK from {where} in time") from None
        if not data:
            raise ConnectionLost(f"{where} closed the connection before CONNACK")
        buf += data
        decoded = framing.read_one(buf)
        if decoded is None:
            continue
        first, used = decoded
        if isinstance(first, mqtt5.DisconnectPacket):
            raise ConnectionLost(f"{where} disconnected us: {int(first.reason_code):#04x}", int(first.reason_code))
        if not isinstance(first, mqtt5.ConnAckPacket):
            raise ProtocolError(f"expected CONNACK from {where}, got {type(first).__name__}")
        if int(first.reason_code) >= REFUSED:
            raise ConnectRefused(int(first.reason_code), first.reason_str)
        # Bytes after the CONNACK (a persistent session's queued messages) are the loop's to decode.
        return first, bytes(buf[used:])
