"""One way to set up an MQTT v5 connection (mlserving_common.mqtt), shared by the library and the load generator.

Both need the same details right: a clean start with no session kept after disconnect (no stale
session on the broker), a large Receive Maximum so the broker may keep many answers in flight to
us, a client id the broker plugin accepts for the login, optional TLS, and, where wanted,
reconnection with a short backoff. TCP_NODELAY is the layer's own default.
"""

from __future__ import annotations

import uuid

from mlserving_common import mqtt, protocol

#: Receive Maximum we announce, so the broker may keep many QoS 1 answers in flight to us.
RECEIVE_MAXIMUM = 65535
#: Reconnect quickly: a client waiting on answers loses little while the broker restarts.
RECONNECT = mqtt.Backoff(min_delay=0.1, max_delay=2.0)
#: QoS levels the connection layer speaks.
QOS_LEVELS = (0, 1)


def new_client_id(username: str | None, kind: str = "mlc") -> str:
    """An unguessable client id owned by `username` (`<username>:<kind>-<16 hex>`), the only kind
    the broker plugin accepts for that login; also a valid single topic level (no '/', '+', '#')."""
    return protocol.owned_client_id(username or kind, f"{kind}-{uuid.uuid4().hex[:16]}")


def check_topic_level(value: str, field: str) -> None:
    """Raise ValueError naming `field` if `value` cannot be one level of a topic name."""
    if not value or any(ch in value for ch in "/+#\x00"):
        raise ValueError(f"{field}: {value!r} must be non-empty and contain none of '/', '+', '#'")


def check_qos(qos: int) -> None:
    """Raise ValueError naming `qos` unless the connection layer supports it (QoS 2 it does not)."""
    if qos not in QOS_LEVELS:
        raise ValueError(f"qos: {qos!r} must be 0 or 1")


def connect_options(
    host: str,
    port: int,
    client_id: str,
    username: str | None,
    password: str | None,
    tls_ca: str | None = None,
    *,
    reconnect: bool = True,
    connect_timeout: float = 10.0,
) -> mqtt.ConnectOptions:
    """Clean start, no session expiry, large Receive Maximum; `reconnect` False fails fast
    (a lost connection stays lost)."""
    return mqtt.ConnectOptions(
        host,
        port,
        client_id=client_id,
        username=username,
        password=password,
        tls_ca_file=tls_ca,
        clean_start=True,
        session_expiry=0,
        receive_maximum=RECEIVE_MAXIMUM,
        connect_timeout=connect_timeout,
        reconnect=RECONNECT if reconnect else None,
    )


def refusal_message(code: int) -> str:
    """The message of a refused_by_broker error: the PUBACK reason code, by number and name."""
    name = mqtt.reason_name("puback", code).split(" ", 1)[1]
    return f"the broker refused the request's PUBLISH: PUBACK reason code 0x{code:02x} ({name.capitalize()})"
