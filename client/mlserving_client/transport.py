"""One way to open a paho MQTT v5 connection, shared by the library and the load generator.

Both need the same details right: MQTT v5 with a clean start (no stale session on the broker),
TCP_NODELAY (QoS 1 round trips fall from ~7,700/s to ~1,000/s without it, Nagle against
delayed ACKs), optional TLS, and automatic reconnection with a short backoff.
"""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from typing import Any, Generic, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from mlserving_common import protocol

#: Receive Maximum we announce, so the broker may keep many QoS 1 answers in flight to us.
RECEIVE_MAXIMUM = 65535
#: PUBACK reason codes from this value up are failures: the broker refused the PUBLISH.
REFUSED = 0x80

K = TypeVar("K")


def new_client_id(username: str | None, kind: str = "mlc") -> str:
    """An unguessable client id owned by `username` (`<username>:<kind>-<16 hex>`), the only kind
    the broker plugin accepts for that login; also a valid single topic level (no '/', '+', '#')."""
    return protocol.owned_client_id(username or kind, f"{kind}-{uuid.uuid4().hex[:16]}")


def check_topic_level(value: str, field: str) -> None:
    """Raise ValueError naming `field` if `value` cannot be one level of a topic name."""
    if not value or any(ch in value for ch in "/+#\x00"):
        raise ValueError(f"{field}: {value!r} must be non-empty and contain none of '/', '+', '#'")


def set_nodelay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """on_socket_open hook: disable Nagle so small QoS 1 packets are not held back."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. a test double): nothing to tune
        pass


def make_client(
    client_id: str,
    username: str | None,
    password: str | None,
    tls_ca: str | None = None,
    unlimited_inflight: bool = True,
) -> mqtt.Client:
    """A configured but not yet connected paho client."""
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
    if unlimited_inflight:
        # paho's default of 20 outgoing QoS 1 messages in flight would throttle many outstanding requests.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
    client.reconnect_delay_set(min_delay=0.1, max_delay=2)  # type: ignore[arg-type]
    client.on_socket_open = set_nodelay
    return client


def connect_properties() -> Properties:
    """CONNECT properties: no session kept after disconnect, large Receive Maximum."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


def start(client: mqtt.Client, host: str, port: int, keepalive: int = 30) -> None:
    """Connect asynchronously with a clean start and run paho's network thread."""
    client.connect_async(host, port, keepalive=keepalive, clean_start=True, properties=connect_properties())
    client.loop_start()


class PublishProperties(Properties):
    """Outgoing PUBLISH properties (Response Topic + Correlation Data), packed once.

    paho's Properties costs tens of microseconds to build and pack per message (name lookups
    and type checks on every attribute), more than the rest of a request's client-side cost.
    For an outgoing PUBLISH paho only calls `pack()` (and str() in debug logs), so this subclass
    skips the generic machinery and hands paho the finished bytes; tests check they equal
    paho's own encoding.
    """

    ResponseTopic: str
    CorrelationData: bytes
    _packed: bytes

    def __init__(self, response_topic: str, correlation: bytes, _topic_field: bytes | None = None) -> None:
        # Deliberately not calling Properties.__init__: its tables are what we avoid building.
        topic_field = _topic_field if _topic_field is not None else response_topic_field(response_topic)
        body = topic_field + b"\x09" + len(correlation).to_bytes(2, "big") + correlation
        object.__setattr__(self, "ResponseTopic", response_topic)
        object.__setattr__(self, "CorrelationData", correlation)
        object.__setattr__(self, "_packed", VariableByteIntegers.encode(len(body)) + body)

    def pack(self) -> bytes:
        return self._packed

    def __str__(self) -> str:
        return f"[ResponseTopic : {self.ResponseTopic!r}, CorrelationData : {self.CorrelationData!r}]"

    __repr__ = __str__


def response_topic_field(response_topic: str) -> bytes:
    """The encoded Response Topic property, reusable for every request of one client."""
    topic = response_topic.encode()
    if len(topic) > 0xFFFF:
        raise ValueError("response topic is too long")
    return b"\x08" + len(topic).to_bytes(2, "big") + topic


def publish_properties(response_topic: str, correlation: bytes) -> PublishProperties:
    """PUBLISH properties that tell the server where to answer and what to echo."""
    if len(correlation) > 0xFFFF:
        raise ValueError("correlation data is too long")
    return PublishProperties(response_topic, correlation)


class PubackTracker(Generic[K]):
    """Which request a QoS 1 PUBLISH's PUBACK belongs to, by paho message id (mid).

    Why: a broker refusal (PUBACK reason code >= 0x80) names only the packet id, and paho reports
    it through `on_publish(mid, reason_code)` from its network thread, possibly before `publish()`
    has returned that mid to the caller. The caller cannot hold a lock across `publish()` that
    `on_publish` also takes (paho calls on_publish under its own lock, which publish() takes too:
    a deadlock), so an acknowledgement that arrives first is kept until `sent()` claims it.
    Bounded: mids are 1..65535 and an entry leaves with its PUBACK.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[int, K] = {}
        self._early: dict[int, int] = {}

    def sent(self, mid: int, key: K) -> int | None:
        """Record that `mid` carries `key`; the PUBACK's reason code if it already arrived, else None."""
        with self._lock:
            code = self._early.pop(mid, None)
            if code is None:
                self._keys[mid] = key
            return code

    def acked(self, mid: int, code: int) -> K | None:
        """The key of `mid`'s PUBLISH, or None if `sent()` has not named it yet (then it returns `code`)."""
        with self._lock:
            key = self._keys.pop(mid, None)
            if key is None:
                self._early[mid] = code
            return key

    def __len__(self) -> int:
        return len(self._keys) + len(self._early)


def refusal_message(code: int) -> str:
    """The message of a refused_by_broker error: the PUBACK reason code, by number and name."""
    try:
        name = mqtt.ReasonCode(PacketTypes.PUBACK, identifier=code).getName()
    except KeyError:  # an identifier paho does not know for PUBACK
        name = "unknown reason"
    return f"the broker refused the request's PUBLISH: PUBACK reason code 0x{code:02x} ({name})"
