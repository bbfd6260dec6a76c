"""Cutting a byte stream into packets with the codec, keeping a partial packet for the next read.

`mqtt5.read` raises IndexError ("Not enough bytes") both for a packet that has not fully arrived
and, in principle, for a complete frame whose fields overrun it; the fixed header tells the two
apart: only when the frame is complete by its Remaining Length is the IndexError a malformed packet.
ValueError is always a malformed packet.
"""

from __future__ import annotations

import mqtt5

from mlserving_common.mqtt.errors import ProtocolError

_read = mqtt5.read


def split(data: bytes | bytearray) -> tuple[list[mqtt5.Packet], int]:
    """The complete packets at the start of `data` and how many bytes they took."""
    packets: list[mqtt5.Packet] = []
    append = packets.append
    end = len(data)
    pos = 0
    with memoryview(data) as view:
        while pos < end:
            try:
                packet, used = _read(view[pos:])
            except IndexError:
                if frame_complete(data, pos):
                    raise ProtocolError("malformed packet from the broker: fields overrun the packet") from None
                break
            except ValueError as exc:
                raise ProtocolError(f"malformed packet from the broker: {exc}") from None
            append(packet)
            pos += used
    return packets, pos


def read_one(data: bytes | bytearray) -> tuple[mqtt5.Packet, int] | None:
    """The first packet of `data` and its length, or None while it is incomplete."""
    with memoryview(data) as view:
        try:
            return _read(view)
        except IndexError:
            if frame_complete(data, 0):
                raise ProtocolError("malformed packet from the broker: fields overrun the packet") from None
            return None
        except ValueError as exc:
            raise ProtocolError(f"malformed packet from the broker: {exc}") from None


def frame_complete(data: bytes | bytearray, pos: int) -> bool:
    """True if data[pos:] holds a whole frame by its fixed header (MQTT v5.0 section 2.1)."""
    length = shift = 0
    end = len(data)
    p = pos + 1
    for _ in range(4):
        if p >= end:
            return False
        byte = data[p]
        p += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return p + length <= end
        shift += 7
    raise ProtocolError("malformed packet from the broker: remaining length longer than 4 bytes")
