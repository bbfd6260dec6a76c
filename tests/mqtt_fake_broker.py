"""A scripted MQTT v5 broker on a real socket, for unit tests of the connection layer and its users.

The test plays the broker: it accepts the connection, reads what the client sent (decoded with the
mqtt5 codec) and writes the packets it chooses, so timing-free tests can see exactly which packets
the client sends and when (e.g. a PUBACK only after ack()).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import mqtt5

WAIT = 10.0


class FakeBroker:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(WAIT)
        self.port: int = self._listener.getsockname()[1]

    def accept(self, connack: mqtt5.ConnAckPacket | None = None) -> Session:
        """The next client connection, after its CONNECT and our CONNACK (success unless given)."""
        sock, _ = self._listener.accept()
        session = Session(sock)
        session.connect = session.expect(mqtt5.ConnectPacket)
        session.send(connack or mqtt5.ConnAckPacket())
        return session

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(WAIT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._buf = bytearray()
        self.connect: Any = None

    def send(self, *packets: Any) -> None:
        self.sock.sendall(b"".join(p.write() for p in packets))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self, timeout: float = WAIT) -> Any:
        """The next packet the client sent; TimeoutError if none within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if self._buf:
                try:
                    packet, used = mqtt5.read(memoryview(self._buf))
                except IndexError:
                    pass
                else:
                    del self._buf[:used]
                    return packet
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the client sent nothing more")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the client closed the connection")
            self._buf += data

    def expect(self, kind: type, timeout: float = WAIT) -> Any:
        packet = self.next(timeout)
        assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
        return packet

    def nothing(self, within: float = 0.3) -> None:
        """Assert the client sends no packet for `within` s (used only where absence is the point)."""
        try:
            packet = self.next(within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {packet!r}")

    def close(self) -> None:
        self.sock.close()
