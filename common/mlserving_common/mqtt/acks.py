"""What publish(), subscribe() and unsubscribe() hand back: results the broker fills in later.

Each completes exactly once, in the network thread: with the broker's reason code(s) or with the
error that means none will ever come. The threading.Event behind wait() is made only when someone
waits, because the server publishes thousands of answers a second and never waits on one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mlserving_common.mqtt.errors import REFUSED, MqttError, reason_name

_EVENT_LOCK = threading.Lock()
#: Set in network threads: waiting there for the network would never end.
network_thread = threading.local()
T = TypeVar("T")


class _Pending(Generic[T]):
    __slots__ = ("_done", "_event", "error", "on_done")

    def __init__(self) -> None:
        self._done = False
        self._event: threading.Event | None = None
        self.error: MqttError | None = None
        self.on_done: Callable[[Any], None] | None = None

    def done(self) -> bool:
        return self._done

    def _finish(self) -> None:
        self._done = True  # before reading _event: see wait()
        event = self._event
        if event is not None:
            event.set()

    def fail(self, error: MqttError) -> None:
        if not self._done:
            self.error = error
            self._finish()

    def _wait(self, timeout: float | None) -> None:
        if not self._done:
            if getattr(network_thread, "active", False):
                raise RuntimeError("wait() in an MQTT callback would block the network thread it waits for")
            with _EVENT_LOCK:
                if self._event is None:
                    self._event = threading.Event()
                event = self._event
            if not self._done and not event.wait(timeout):
                raise TimeoutError(f"no answer from the broker within {timeout} s")
        if self.error is not None:
            raise self.error


class Delivery(_Pending[int]):
    """One publish(): its PUBACK reason code (QoS 1), or 0 once written (QoS 0)."""

    __slots__ = ("context", "fields", "packet_id", "qos", "reason_code", "topic")

    def __init__(self, topic: str, qos: int, context: object, fields: Any) -> None:
        super().__init__()
        self.topic = topic
        self.qos = qos
        self.context = context
        self.packet_id: int | None = None
        self.reason_code: int | None = None
        #: PUBLISH fields (payload, retain, response topic, correlation, user properties, expiry) for (re-)encoding.
        self.fields = fields

    def complete(self, reason_code: int) -> None:
        self.reason_code = reason_code
        self._finish()

    def wait(self, timeout: float | None = None) -> int:
        """The PUBACK reason code; raises TimeoutError or the error that ended the delivery."""
        self._wait(timeout)
        assert self.reason_code is not None
        return self.reason_code

    @property
    def refused(self) -> bool:
        return self.reason_code is not None and self.reason_code >= REFUSED

    @property
    def reason(self) -> str:
        if self.reason_code is None:
            return str(self.error) if self.error else "not acknowledged yet"
        return reason_name("puback", self.reason_code)


class _FilterAck(_Pending[list[int]]):
    __slots__ = ("filters", "packet_id", "reason_codes")

    def __init__(self, filters: list[str], packet_id: int) -> None:
        super().__init__()
        self.filters = filters
        self.packet_id = packet_id
        self.reason_codes: list[int] | None = None

    def complete(self, reason_codes: list[int]) -> None:
        self.reason_codes = [int(code) for code in reason_codes]
        self._finish()

    def wait(self, timeout: float | None = None) -> list[int]:
        """One reason code per filter, in order; raises TimeoutError or the connection's error."""
        self._wait(timeout)
        assert self.reason_codes is not None
        return self.reason_codes

    @property
    def refused(self) -> list[str]:
        """The filters the broker refused (reason code >= 0x80)."""
        return [f for f, code in zip(self.filters, self.reason_codes or [], strict=False) if code >= REFUSED]


class SubscribeAck(_FilterAck):
    """SUBACK of one subscribe(): granted QoS (0, 1) or a failure code per filter."""

    __slots__ = ()


class UnsubscribeAck(_FilterAck):
    """UNSUBACK of one unsubscribe(): 0 success, 0x11 no subscription existed, or a failure per filter."""

    __slots__ = ()
