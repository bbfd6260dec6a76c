"""How to reach the broker and which session to ask for: one frozen value per connection."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Reconnect forever, waiting min_delay after a loss and doubling up to max_delay."""

    min_delay: float = 1.0
    max_delay: float = 10.0

    def delays(self) -> _Delays:
        return _Delays(self)


class _Delays:
    """The delay sequence of one run of failures; reset() after a successful connect."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._next = backoff.min_delay

    def next(self) -> float:
        delay = self._next
        self._next = min(self._backoff.max_delay, max(self._next * 2, 0.01))
        return delay

    def reset(self) -> None:
        self._next = self._backoff.min_delay


@dataclass(frozen=True)
class ConnectOptions:
    """Everything CONNECT and the socket need; reconnect=None means fail fast (a lost connection stays lost)."""

    host: str
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls_ca_file: str | None = None
    ssl_context: ssl.SSLContext | None = None
    keepalive: int = 30
    clean_start: bool = True
    session_expiry: int = 0
    receive_maximum: int = 65535
    max_inflight: int = 65535
    connect_timeout: float = 10.0
    reconnect: Backoff | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError(f"receive_maximum must be 1..65535, not {self.receive_maximum}")
        if not 1 <= self.max_inflight <= 65535:
            raise ValueError(f"max_inflight must be 1..65535, not {self.max_inflight}")
        if not 0 <= self.keepalive <= 65535:
            raise ValueError(f"keepalive must be 0..65535 s, not {self.keepalive}")

    def tls_context(self) -> ssl.SSLContext | None:
        """The context to wrap the socket in, or None for plain TCP."""
        if self.ssl_context is not None:
            return self.ssl_context
        if self.tls_ca_file is None:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        return context
