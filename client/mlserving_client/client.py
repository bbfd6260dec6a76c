"""The Python client: connect once, send forecasts requests, match answers by correlation id.

Every request carries an id (uuid4 hex) as MQTT v5 Correlation Data and a Response Topic
under the tenant's response namespace (`<tenant response topic>/<client id>`), the only place
the server answers into. A request that gets no answer in time is sent again with the SAME id,
so the server's answer to any attempt completes it and later answers are counted as
duplicates and ignored. Error answers raise PredictionError; codes the protocol marks
retryable are retried first. A request whose PUBLISH the broker refuses (PUBACK reason code
>= 0x80: the tenant's backlog or budget is full) fails the same way, at once, with the code
`refused_by_broker` instead of waiting out its timeout as if it were lost.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, cast

from mlserving_client import transport
from mlserving_common import mqtt, protocol
from mlserving_common.logs import event

log = logging.getLogger("mlserving_client")

#: How many completed ids are remembered to tell a duplicate answer from a stray one.
DONE_MEMORY = 100_000


class PredictionError(Exception):
    """The server answered with an error, or the broker refused the request (see protocol.ErrorCode)."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        return self.code in protocol.ErrorCode.RETRYABLE


class PredictionTimeout(TimeoutError):
    """No answer after every attempt."""

    def __init__(self, request_id: str, attempts: int, timeout: float) -> None:
        super().__init__(f"request {request_id}: no answer after {attempts} attempt(s) of {timeout:g} s")
        self.request_id = request_id
        self.attempts = attempts


@dataclass(frozen=True)
class Prediction:
    """A successful answer. `values` has one forecast per instance (one for `predict`)."""

    id: str
    values: list[Any]
    model: str | None
    version: str | None
    tenant: str | None
    normalized: bool
    batched: bool
    attempts: int
    latency_s: float
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def value(self) -> Any:
        """The forecast of a single-series request."""
        return self.values[0]

    @property
    def steps(self) -> list[Any] | None:
        """With `horizon`: the forecast steps (a list; one list per instance when batched), else None."""
        return self.raw.get("forecasts" if self.batched else "forecast")


@dataclass
class ClientStats:
    """What happened on this connection; read with Client.stats()."""

    sent: int = 0
    retries: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    timeouts: int = 0
    duplicates: int = 0
    unexpected: int = 0
    connects: int = 0


@dataclass
class _Pending:
    request_id: str
    payload: bytes
    future: Future[Prediction]
    timeout: float
    max_attempts: int
    batched: bool
    started_ns: int
    attempt: int = 1
    resend_scheduled: bool = False


class Client:
    """A connection to the broker that turns series into forecasts.

    Thread-safe: `submit` may be called from many threads; answers complete futures from
    the connection's network thread, retries and timeouts from one timer thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        tenant: str,
        prefix: str = protocol.DEFAULT_PREFIX,
        request_topic: str | None = None,
        response_topic: str | None = None,
        tls_ca: str | None = None,
        qos: int = 1,
        client_id: str | None = None,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.2,
        connect_timeout: float = 10.0,
    ) -> None:
        transport.check_qos(qos)
        if timeout <= 0:
            raise ValueError(f"timeout: {timeout!r} must be > 0")
        if attempts < 1:
            raise ValueError(f"attempts: {attempts!r} must be >= 1")
        if backoff < 0:
            raise ValueError(f"backoff: {backoff!r} must be >= 0")
        transport.check_topic_level(tenant, "tenant")
        self.tenant = tenant
        self.client_id = client_id or transport.new_client_id(username)
        transport.check_topic_level(self.client_id, "client_id")
        self.qos = qos
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.request_topic = request_topic or protocol.request_topic(tenant, prefix)
        self.reply_topic = f"{response_topic or protocol.response_topic(tenant, prefix)}/{self.client_id}"

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, _Pending] = {}
        self._done: OrderedDict[str, None] = OrderedDict()
        self._timers: list[tuple[float, int, str, str, int]] = []
        self._timer_seq = itertools.count()
        self._stats = ClientStats()
        self._closed = False
        self._ready = threading.Event()
        self._failure: str | None = None
        self._last_error: mqtt.MqttError | None = None
        self._up = False  # connected now (network thread only)

        options = transport.connect_options(
            host, port, self.client_id, username, password, tls_ca, connect_timeout=connect_timeout
        )
        self._mqtt = mqtt.Connection(
            options,
            on_connect=self._on_connect,
            on_message=self._on_message,
            on_delivery=self._on_delivery,
            on_disconnect=self._on_disconnect,
        )
        self._timer_thread = threading.Thread(target=self._run_timers, name="mlserving-client-timers", daemon=True)
        self._timer_thread.start()
        # The network thread connects, retrying (the broker may be starting) until connect_timeout.
        self._mqtt.start()
        if not self._ready.wait(connect_timeout) or self._failure:
            last = f" (last error: {self._last_error})" if self._last_error else ""
            reason = self._failure or f"no connection to {host}:{port} within {connect_timeout:g} s{last}"
            self.close()
            raise ConnectionError(reason)

    # -- public API -------------------------------------------------------------------------

    def submit(
        self,
        series: Sequence[float] | None = None,
        *,
        instances: Sequence[Sequence[float]] | None = None,
        model: str | None = None,
        series_id: str | None = None,
        timeout: float | None = None,
        attempts: int | None = None,
        request_id: str | None = None,
        horizon: int | None = None,
        time_s: float | None = None,
        times_s: Sequence[float] | None = None,
    ) -> Future[Prediction]:
        """Send one request and return a future for its Prediction (or its exception).

        `time_s` (series) / `times_s` (instances): unix seconds of the last reading, which calendar
        models need; `horizon`: forecast steps wanted from a day-ahead model (Prediction.steps)."""
        rid = request_id or uuid.uuid4().hex
        payload = protocol.encode_request(
            list(series) if series is not None else None,
            request_id=rid,
            instances=[list(s) for s in instances] if instances is not None else None,
            model=model,
            series_id=series_id,
            horizon=horizon,
            time=time_s,
            times=list(times_s) if times_s is not None else None,
        )
        pending = _Pending(
            request_id=rid,
            payload=payload,
            future=Future(),
            timeout=timeout if timeout is not None else self.timeout,
            max_attempts=attempts if attempts is not None else self.attempts,
            batched=instances is not None,
            started_ns=time.perf_counter_ns(),
        )
        pending.future.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise RuntimeError("client is closed")
            if rid in self._pending:
                raise ValueError(f"request_id: {rid!r} is already in flight")
            self._pending[rid] = pending
            self._schedule(time.monotonic() + pending.timeout, "expire", rid, 1)
            self._stats.sent += 1
        self._publish(pending)
        return pending.future

    def predict(
        self,
        series: Sequence[float],
        timeout: float | None = None,
        model: str | None = None,
        series_id: str | None = None,
        horizon: int | None = None,
        time_s: float | None = None,
    ) -> Prediction:
        """Forecast one series (raw readings, oldest first); blocks until answered or failed."""
        return self._wait(
            self.submit(series, model=model, series_id=series_id, timeout=timeout, horizon=horizon, time_s=time_s),
            timeout,
        )

    def predict_batch(
        self, instances: Sequence[Sequence[float]], timeout: float | None = None, model: str | None = None
    ) -> list[Any]:
        """Forecast many series in one message; returns one forecast per instance, in order."""
        return self._wait(self.submit(instances=instances, model=model, timeout=timeout), timeout).values

    def stats(self) -> ClientStats:
        """A snapshot of this client's counters."""
        with self._lock:
            s = self._stats
            return ClientStats(
                s.sent, s.retries, s.answered, Counter(s.errors), s.timeouts, s.duplicates, s.unexpected, s.connects
            )

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Fail what is still pending, disconnect and stop the threads (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending.values())
            self._pending.clear()
            self._wake.notify_all()
        for p in pending:
            _resolve(p.future, exc=ConnectionError("client closed before an answer arrived"))
        self._mqtt.close()
        if threading.current_thread() is not self._timer_thread:
            self._timer_thread.join(timeout=5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _wait(self, future: Future[Prediction], timeout: float | None) -> Prediction:
        per_attempt = timeout if timeout is not None else self.timeout
        # The timer thread always resolves the future; this bound only guards against a bug.
        bound = self.attempts * (per_attempt + self.backoff * 2**self.attempts) + 10
        return future.result(timeout=bound)

    def _publish(self, pending: _Pending) -> None:
        # At QoS 1 the connection queues the message while disconnected and sends it on reconnect;
        # at QoS 0 (or once closed) it is dropped: the retry timer resends it (close() fails it).
        try:
            self._mqtt.publish(
                self.request_topic,
                pending.payload,
                self.qos,
                response_topic=self.reply_topic,
                correlation_data=pending.request_id.encode(),
                context=(pending.request_id, pending.attempt),
            )
        except mqtt.NotConnected:
            pass

    def _on_delivery(self, delivery: mqtt.Delivery) -> None:
        """PUBACK of a request (QoS 1): a reason code >= 0x80 means the broker refused it and no
        server will ever see it, so the request fails now, not at its timeout."""
        if delivery.refused and delivery.reason_code is not None:
            rid, attempt = cast(tuple[str, int], delivery.context)
            self._refused(rid, attempt, delivery.reason_code)

    def _count_stray(self, rid: object) -> None:
        """An answer to no pending request: a duplicate if it names a completed one."""
        with self._lock:
            if isinstance(rid, str) and rid in self._done:
                self._stats.duplicates += 1
            else:
                self._stats.unexpected += 1

    def _refused(self, rid: str, attempt: int, code: int) -> None:
        event(log, "request_refused", logging.DEBUG, request_id=rid, attempt=attempt, reason_code=code)
        self._settle_error(rid, protocol.ErrorCode.REFUSED_BY_BROKER, transport.refusal_message(code), attempt)

    def _settle_error(self, rid: str, code: str, message: str, attempt: int | None = None) -> bool:
        """An error for request `rid` (an error answer, or the broker refusing attempt `attempt`):
        resent after the backoff if the code is retryable and attempts remain, else the request
        fails with PredictionError. False if `rid` is not pending (or a later attempt already is)."""
        with self._lock:
            pending = self._pending.get(rid)
            if pending is None or (attempt is not None and attempt != pending.attempt):
                return False
            self._stats.errors[code] += 1
            if code in protocol.ErrorCode.RETRYABLE and pending.attempt < pending.max_attempts:
                if not pending.resend_scheduled:
                    pending.resend_scheduled = True
                    self._schedule(
                        time.monotonic() + self._retry_delay(pending.attempt), "resend", rid, pending.attempt
                    )
                return True
            del self._pending[rid]
            self._remember_done(rid)
        _resolve(pending.future, exc=PredictionError(code, message, rid))
        return True

    def _schedule(self, when: float, action: str, rid: str, attempt: int) -> None:
        """Caller holds the lock."""
        heapq.heappush(self._timers, (when, next(self._timer_seq), action, rid, attempt))
        if self._timers[0][0] == when:
            self._wake.notify()

    def _remember_done(self, rid: str) -> None:
        """Caller holds the lock."""
        self._done[rid] = None
        if len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)

    def _retry_delay(self, attempt: int) -> float:
        return self.backoff * 2 ** (attempt - 1)

    def _run_timers(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._timers or self._timers[0][0] > time.monotonic()):
                    wait = self._timers[0][0] - time.monotonic() if self._timers else None
                    self._wake.wait(wait)
                if self._closed:
                    return
                _, _, action, rid, attempt = heapq.heappop(self._timers)
                pending = self._pending.get(rid)
                if pending is None or pending.attempt != attempt:
                    continue
                resend = timed_out = False
                if action == "expire" and not pending.resend_scheduled:
                    if attempt < pending.max_attempts:
                        pending.resend_scheduled = True
                        self._schedule(time.monotonic() + self._retry_delay(attempt), "resend", rid, attempt)
                    else:
                        del self._pending[rid]
                        self._remember_done(rid)
                        self._stats.timeouts += 1
                        timed_out = True
                elif action == "resend":
                    pending.resend_scheduled = False
                    pending.attempt += 1
                    self._stats.retries += 1
                    self._schedule(time.monotonic() + pending.timeout, "expire", rid, pending.attempt)
                    resend = True
            if timed_out:
                _resolve(pending.future, exc=PredictionTimeout(rid, pending.attempt, pending.timeout))
            elif resend:
                event(log, "request_retry", logging.DEBUG, request_id=rid, attempt=pending.attempt)
                self._publish(pending)

    def _on_connect(self, _connack: mqtt.ConnAck) -> None:
        self._up = True
        with self._lock:
            self._stats.connects += 1
        self._mqtt.subscribe(self.reply_topic, qos=self.qos, on_done=self._on_subscribe)
        event(log, "connected", logging.DEBUG, client_id=self.client_id, reply_topic=self.reply_topic)

    def _on_subscribe(self, ack: mqtt.SubscribeAck) -> None:
        if ack.error is not None:
            return  # the connection dropped before the SUBACK: the next connect subscribes again
        if ack.refused:
            if not self._ready.is_set():
                code = mqtt.reason_name("suback", (ack.reason_codes or [0])[0])
                self._failure = f"broker refused the subscription to {self.reply_topic}: {code}"
                self._ready.set()
            return
        first = not self._ready.is_set()
        self._ready.set()
        if not first:
            # After a reconnect the broker may have lost requests and answers in flight: send the
            # pending ones again now (same ids) instead of waiting for their timeouts.
            with self._lock:
                pending = list(self._pending.values())
            for p in pending:
                self._publish(p)
            event(log, "reconnected", logging.INFO, client_id=self.client_id, resent=len(pending))

    def _on_disconnect(self, error: mqtt.MqttError) -> None:
        """A lost connection or a failed attempt; refused at the first attempt (bad credentials, a
        client id the broker does not accept) the client gives up instead of retrying forever."""
        self._last_error = error
        was_up, self._up = self._up, False
        if isinstance(error, mqtt.ConnectRefused):
            if not self._ready.is_set():
                self._failure = str(error)
                self._ready.set()
            event(log, "connect_refused", logging.WARNING, reason=str(error))
        elif was_up and not self._closed:  # not every failed attempt while the broker is away
            event(log, "disconnected", logging.WARNING, client_id=self.client_id, reason=str(error))

    def _on_message(self, msg: mqtt.Message) -> None:
        now_ns = time.perf_counter_ns()
        try:
            body = protocol.decode_response(msg.payload)
        except ValueError:
            with self._lock:
                self._stats.unexpected += 1
            return
        correlation = msg.correlation_data
        rid: Any = correlation.decode(errors="replace") if correlation else body.get("id")
        error = body.get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code", protocol.ErrorCode.INTERNAL)), str(error.get("message", ""))
            if not (isinstance(rid, str) and self._settle_error(rid, code, message)):
                self._count_stray(rid)
            return
        with self._lock:
            pending = self._pending.pop(rid, None) if isinstance(rid, str) else None
            if pending is not None:
                self._stats.answered += 1
                self._remember_done(rid)
        if pending is None:
            self._count_stray(rid)
            return
        values = body.get("predictions") if pending.batched else [body.get("prediction")]
        _resolve(
            pending.future,
            result=Prediction(
                id=rid,
                values=list(values or []),
                model=body.get("model"),
                version=body.get("version"),
                tenant=body.get("tenant"),
                normalized=bool(body.get("normalized", False)),
                batched=pending.batched,
                attempts=pending.attempt,
                latency_s=(now_ns - pending.started_ns) / 1e9,
                raw=body,
            ),
        )


def _resolve(future: Future[Prediction], result: Prediction | None = None, exc: BaseException | None = None) -> None:
    """Complete a future unless the caller cancelled it meanwhile."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass
