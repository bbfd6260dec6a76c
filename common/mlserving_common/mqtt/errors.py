"""Errors of the MQTT layer, and the names of reason codes for messages people read.

All errors are ConnectionErrors, so callers that treated "the broker is gone" as ConnectionError
keep working; the subclasses say which of the distinct situations it is.
"""

from __future__ import annotations

import enum

import mqtt5

#: Reason codes from this value up are failures (MQTT v5.0 section 2.4).
REFUSED = 0x80

_CODES: dict[str, type[enum.IntEnum]] = {
    "connack": mqtt5.ConnAckReasonCode,
    "puback": mqtt5.PubAckReasonCode,
    "suback": mqtt5.SubAckReasonCode,
    "unsuback": mqtt5.UnsubAckReasonCode,
    "disconnect": mqtt5.DisconnectReasonCode,
}


def reason_name(kind: str, code: int) -> str:
    """`0x87 not authorized`: a reason code of packet `kind` ("connack", "puback", ...) by number and name."""
    try:
        name = _CODES[kind](code).name.lower().replace("_", " ")
    except ValueError:
        name = "unknown reason"
    return f"0x{code:02x} {name}"


class MqttError(ConnectionError):
    """Base of every error this package raises about the connection."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a failure reason code; retrying rarely helps."""

    def __init__(self, reason_code: int, reason_string: str | None = None) -> None:
        self.reason_code = reason_code
        detail = f" ({reason_string})" if reason_string else ""
        super().__init__(f"broker refused the connection: {reason_name('connack', reason_code)}{detail}")


class ConnectionLost(MqttError):
    """The connection dropped (socket error, keepalive timeout, or the broker's DISCONNECT)."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        self.reason_code = reason_code
        super().__init__(message)


class NotConnected(MqttError):
    """The call needs a live connection and there is none."""


class ConnectionClosed(NotConnected):
    """close() was called: the connection will not come back."""


class ProtocolError(MqttError):
    """The broker sent bytes the codec cannot decode, or a packet we did not expect."""
