"""Cutting the byte stream into packets: partial packets wait for the rest, malformed ones fail loudly."""

from __future__ import annotations

import random

import mqtt5
import pytest

from mlserving_common.mqtt import ProtocolError, framing

QOS1 = mqtt5.QoS.AT_LEAST_ONCE
PACKETS = [
    mqtt5.PublishPacket(
        "ml/a/requests", b'{"id": "1"}', qos=QOS1, packet_id=1, correlation_data=b"c1", response_topic="ml/a/responses"
    ),
    mqtt5.PubAckPacket(7),
    mqtt5.PublishPacket("t", b"x" * 70_000),  # larger than one 64 KiB read, 3-byte remaining length
    mqtt5.SubAckPacket(3, [mqtt5.SubAckReasonCode.NOT_AUTHORIZED]),
    mqtt5.PingRespPacket(),
    mqtt5.PublishPacket("t/ü", b"", qos=QOS1, packet_id=65535, user_properties=[("k", "v")]),
]
STREAM = b"".join(p.write() for p in PACKETS)


class FakeSocket:
    """Hands out the stream in reads of random sizes, as TCP may."""

    def __init__(self, data: bytes, seed: int) -> None:
        self._data = data
        self._random = random.Random(seed)

    def recv(self, size: int) -> bytes:
        n = self._random.choice([1, 2, 3, 5, 64, 1000, size])
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk


def _read_all(sock: FakeSocket) -> list[mqtt5.Packet]:
    """What the connection's reader does: keep the unconsumed tail, decode what is complete."""
    buf = bytearray()
    got: list[mqtt5.Packet] = []
    while chunk := sock.recv(65536):
        buf += chunk
        packets, used = framing.split(buf)
        del buf[:used]
        got += packets
    assert not buf
    return got


@pytest.mark.parametrize("seed", range(20))
def test_packets_split_across_reads_come_out_whole_and_in_order(seed: int) -> None:
    assert _read_all(FakeSocket(STREAM, seed)) == PACKETS


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 10, len(PACKETS[0].write()) - 1])
def test_an_incomplete_packet_is_kept_not_consumed(cut: int) -> None:
    first = PACKETS[0].write()
    assert framing.split(first[:cut]) == ([], 0)
    assert framing.read_one(first[:cut]) is None
    assert framing.split(first + first[:cut]) == ([PACKETS[0]], len(first))


def test_a_complete_frame_that_fails_to_decode_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        framing.split(b"\x30\x05\x00\x09abc")  # topic length 9 in a 5-byte packet
    with pytest.raises(ProtocolError):
        framing.split(b"\x40\x03\x00\x05\x55")  # PUBACK with an undefined reason code
    with pytest.raises(ProtocolError):
        framing.split(b"\x30\xff\xff\xff\xff\x01")  # remaining length longer than 4 bytes
