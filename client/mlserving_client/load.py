"""Load generator: drive any request/response server that speaks the wire contract.

One connection (mlserving_common.mqtt) per tenant keeps many requests outstanding. Payloads are
encoded once with protocol.encode_request around a placeholder id and completed per request by
splicing the id in, so the per-request cost is a bytes join, a dict insert and one publish.
Answers are matched by MQTT v5 Correlation Data in the connection's network thread; latencies
are perf_counter_ns differences. Open loop sends at a fixed rate whatever the server does (the
honest way to measure latency under a given load); closed loop keeps a fixed number of
requests outstanding (the way to find saturation throughput). A request whose PUBLISH the
broker refuses (PUBACK reason code >= 0x80, matched to its request) counts at once as an error
`refused_by_broker`, neither answered nor lost, and in closed loop frees its slot.

`run_load` is the entry point for the CLI, benchmarks and tests.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from mlserving_client import transport
from mlserving_client.stats import Counters, LatencyRecorder, LatencySummary, rate, summarize_ns
from mlserving_common import mqtt, protocol
from mlserving_common.logs import event

log = logging.getLogger("mlserving_client.load")

MAX_DURATION_S = 3600.0
ENGINES = ("auto", "lean", "reconnect")
_ID_MARK = "@@request-id@@"
_MONITOR_INTERVAL_S = 0.05


@dataclass(frozen=True)
class TenantTarget:
    """One tenant to load, with its own credentials and (optionally) explicit topics."""

    tenant: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    request_topic: str | None = None
    response_topic: str | None = None


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how fast, for how long. Exactly one of rate/concurrency; duration and/or count."""

    host: str
    port: int
    targets: tuple[TenantTarget, ...]
    rate: float | None = None
    concurrency: int | None = None
    duration: float | None = None
    count: int | None = None
    batch: int = 1
    window: int = protocol.LEGACY_WINDOW
    model: str | None = None
    qos: int = 1
    prefix: str = protocol.DEFAULT_PREFIX
    tls_ca: str | None = None
    grace: float = 5.0
    request_timeout: float = 5.0
    connect_timeout: float = 10.0
    windows: tuple[tuple[float, ...], ...] | None = None
    #: "lean": a broken connection fails its tenant (unanswered requests count as lost), or
    #: "reconnect": it comes back with the library's backoff; "auto" is lean.
    engine: str = "auto"
    #: Publish each request to the lane's own reply topic, so the broker hands it straight back
    #: with no server involved: measures the generator's (and broker's) own ceiling. The user
    #: needs write access to its response namespace, which tenant ACLs do not grant.
    loopback: bool = False

    @property
    def resolved_engine(self) -> str:
        return "lean" if self.engine == "auto" else self.engine

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        if not self.targets:
            raise ValueError("targets: at least one tenant is needed")
        names = [t.tenant for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"targets: tenant names repeat: {names}")
        for t in self.targets:
            transport.check_topic_level(t.tenant, "tenant")
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("rate/concurrency: give exactly one (open loop at a rate or closed loop at a concurrency)")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate: {self.rate!r} must be a positive number of requests per second")
        if self.concurrency is not None and self.concurrency < len(self.targets):
            raise ValueError(
                f"concurrency: {self.concurrency!r} must be >= the number of tenants ({len(self.targets)})"
            )
        if self.duration is None and self.count is None:
            raise ValueError("duration/count: give a duration, a count or both")
        if self.duration is not None and not 0 < self.duration <= MAX_DURATION_S:
            raise ValueError(f"duration: {self.duration!r} must be within (0, {MAX_DURATION_S:g}] seconds")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count: {self.count!r} must be >= 1")
        if self.batch < 1:
            raise ValueError(f"batch: {self.batch!r} must be >= 1")
        if self.window < 1:
            raise ValueError(f"window: {self.window!r} must be >= 1")
        transport.check_qos(self.qos)
        if self.grace < 0:
            raise ValueError(f"grace: {self.grace!r} must be >= 0")
        if self.engine not in ENGINES:
            raise ValueError(f"engine: {self.engine!r} must be one of {', '.join(ENGINES)}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout: {self.request_timeout!r} must be > 0")


@dataclass
class TenantResult:
    tenant: str
    counters: Counters
    latency: LatencySummary

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, **self.counters.to_dict(), "latency": self.latency.to_dict()}


@dataclass
class LoadResult:
    """Everything a run measured; `to_dict()` is the `--json` document."""

    mode: str
    engine: str
    target_rate: float | None
    concurrency: int | None
    batch: int
    qos: int
    counters: Counters
    latency: LatencySummary
    send_seconds: float
    elapsed_seconds: float
    tenants: list[TenantResult]
    versions: dict[str, int] = field(default_factory=dict)
    #: CPU time this process used while sending and receiving (all threads), to tell whether
    #: the generator itself was the bottleneck: near elapsed_seconds means one core was saturated.
    cpu_seconds: float = 0.0
    #: Tenants whose connection broke during the run, with the reason.
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.cpu_seconds / self.counters.sent if self.counters.sent else 0.0

    @property
    def offered_rate(self) -> float:
        """Requests per second actually sent (below target_rate if the generator could not keep up)."""
        return rate(self.counters.sent, self.send_seconds)

    @property
    def throughput(self) -> float:
        """Answers (success or error) per second, first send to last answer."""
        return rate(self.counters.replied, self.elapsed_seconds)

    @property
    def forecasts_per_second(self) -> float:
        return rate(self.counters.answered * self.batch, self.elapsed_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "engine": self.engine,
            "target_rate": self.target_rate,
            "concurrency": self.concurrency,
            "batch": self.batch,
            "qos": self.qos,
            **self.counters.to_dict(),
            "send_seconds": round(self.send_seconds, 6),
            "elapsed_seconds": round(self.elapsed_seconds, 6),
            "offered_rate": round(self.offered_rate, 2),
            "throughput": round(self.throughput, 2),
            "forecasts_per_second": round(self.forecasts_per_second, 2),
            "latency": self.latency.to_dict(),
            "client_cpu_seconds": round(self.cpu_seconds, 3),
            "client_cpu_percent": round(self.cpu_percent, 1),
            "client_cpu_us_per_request": round(self.cpu_us_per_request, 1),
            "versions": dict(sorted(self.versions.items())),
            "failures": dict(self.failures),
            "tenants": [t.to_dict() for t in self.tenants],
        }

    def format_text(self) -> str:
        """The human summary the CLI prints."""
        c, lat = self.counters, self.latency
        how = (
            f"open loop at {self.target_rate:g} req/s"
            if self.mode == "open"
            else f"closed loop at {self.concurrency} outstanding"
        )
        errors = ", ".join(f"{k}={v}" for k, v in sorted(c.errors.items())) or "none"
        lines = [
            f"load: {how}, batch {self.batch}, QoS {self.qos}, {len(self.tenants)} tenant(s), {self.engine} client",
            f"sent {c.sent}  answered {c.answered}  errors {c.error_total} ({errors})  lost {c.lost}  "
            f"duplicates {c.duplicates}  unexpected {c.unexpected}",
            f"offered {self.offered_rate:,.0f} req/s over {self.send_seconds:.2f} s; throughput {self.throughput:,.0f} "
            f"answers/s ({self.forecasts_per_second:,.0f} forecasts/s) over {self.elapsed_seconds:.2f} s",
        ]
        if lat.count:
            lines.append(
                f"latency ms: p50 {lat.p50_ms:.2f}  p95 {lat.p95_ms:.2f}  p99 {lat.p99_ms:.2f}  max {lat.max_ms:.2f}"
                f"  (mean {lat.mean_ms:.2f}, n={lat.count})"
            )
        else:
            lines.append("latency: no successful answers")
        lines.append(
            f"generator CPU: {self.cpu_percent:.0f} % of one core, {self.cpu_us_per_request:.0f} µs per request"
        )
        if self.versions:
            lines.append("versions: " + ", ".join(f"{k}={v}" for k, v in sorted(self.versions.items())))
        for tenant, reason in sorted(self.failures.items()):
            lines.append(f"connection of {tenant} failed: {reason}")
        if len(self.tenants) > 1:
            for t in self.tenants:
                tc, tl = t.counters, t.latency
                p99 = f"{tl.p99_ms:.2f}" if tl.count else "-"
                lines.append(
                    f"  {t.tenant}: sent {tc.sent} answered {tc.answered} errors {tc.error_total} lost {tc.lost} "
                    f"duplicates {tc.duplicates} p99 {p99} ms"
                )
        return "\n".join(lines)


def synthetic_windows(window: int, n: int = 64) -> tuple[tuple[float, ...], ...]:
    """Plausible readings (a daily-ish cycle around 10) so any trained model gets in-range input."""
    return tuple(
        tuple(round(10.0 + 5.0 * math.sin((k + i) * 2 * math.pi / 24), 3) for i in range(window)) for k in range(n)
    )


def request_templates(windows: Sequence[Sequence[float]], batch: int, model: str | None) -> list[tuple[bytes, bytes]]:
    """(head, tail) pairs such that head + b'"' + id + b'"' + tail is encode_request(...) for that id."""
    marker = f'"{_ID_MARK}"'.encode()
    templates = []
    for k in range(len(windows)):
        if batch == 1:
            encoded = protocol.encode_request(list(windows[k]), request_id=_ID_MARK, model=model)
        else:
            group = [list(windows[(k + j) % len(windows)]) for j in range(batch)]
            encoded = protocol.encode_request(instances=group, request_id=_ID_MARK, model=model)
        head, sep, tail = encoded.partition(marker)
        if not sep or marker in tail:
            raise AssertionError("request template must contain the id placeholder exactly once")
        templates.append((head + b'"', b'"' + tail))
    return templates


class _Connection:
    """A lane's connection. Engine lean fails fast: a broken connection fails the lane (reported
    in `failures`) and its unanswered requests count as lost; engine reconnect comes back with
    the library's backoff, re-sending the QoS 1 requests that were in flight."""

    def __init__(self, lane: _Lane, spec: LoadSpec) -> None:
        self.lane = lane
        self.failure: str | None = None
        self.ready = threading.Event()
        self._closing = False
        target = lane.target
        options = transport.connect_options(
            spec.host,
            spec.port,
            lane.client_id,
            target.username,
            target.password,
            spec.tls_ca,
            reconnect=spec.resolved_engine == "reconnect",
            connect_timeout=spec.connect_timeout,
        )
        self.client = mqtt.Connection(
            options,
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_delivery=self._on_delivery if lane.qos else None,
        )
        self._publish = self.client.publish

    def start(self) -> None:
        self.client.start()

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            raise ConnectionError(f"no connection within {timeout:g} s")
        if self.failure:
            raise ConnectionError(self.failure)

    def publish(self, rid: bytes, payload: bytes) -> None:
        lane = self.lane
        try:
            self._publish(
                lane.request_topic,
                payload,
                lane.qos,
                response_topic=lane.reply_topic,
                correlation_data=rid,
                context=rid,
            )
        except mqtt.NotConnected:
            pass  # the lane failed (lean), or QoS 0 while reconnecting: the request counts as lost

    def publish_many(self, requests: list[tuple[bytes, bytes]]) -> None:
        """Queued together: one wake-up of the network thread, one write for the lot."""
        for rid, payload in requests:
            self.publish(rid, payload)

    def close(self) -> None:
        self._closing = True
        self.client.close()

    def _on_connect(self, _connack: mqtt.ConnAck) -> None:
        self.client.subscribe(self.lane.reply_topic, qos=self.lane.qos, on_done=self._on_subscribe)

    def _on_subscribe(self, ack: mqtt.SubscribeAck) -> None:
        if not self.ready.is_set() and ack.error is None:
            if ack.refused:
                code = mqtt.reason_name("suback", (ack.reason_codes or [0])[0])
                self.failure = f"subscription to {self.lane.reply_topic} refused: {code}"
            self.ready.set()

    def _on_disconnect(self, error: mqtt.MqttError) -> None:
        """Lean: any loss fails the lane. Reconnect: only a refusal of the first connect does."""
        if self._closing or self.failure is not None:
            return
        first_refused = not self.ready.is_set() and isinstance(error, mqtt.ConnectRefused)
        if self.client.options.reconnect is None or first_refused:
            self.failure = str(error)
            self.ready.set()

    def _on_delivery(self, delivery: mqtt.Delivery) -> None:
        if delivery.refused:
            self.lane.on_refused(cast(bytes, delivery.context))

    def _on_message(self, msg: mqtt.Message) -> None:
        self.lane.on_answer(msg.correlation_data, msg.payload, time.perf_counter_ns())


class _Lane:
    """One tenant's connection, its outstanding requests and what came back."""

    def __init__(
        self,
        target: TenantTarget,
        spec: LoadSpec,
        templates: list[tuple[bytes, bytes]],
        on_reply: Callable[[_Lane, bytes], None] | None,
    ) -> None:
        self.target = target
        self.qos = spec.qos
        self.client_id = transport.new_client_id(target.username, "mll")
        self.tag = self.client_id.rsplit("-", 1)[1].encode() + b"-"
        self.request_topic = target.request_topic or protocol.request_topic(target.tenant, spec.prefix)
        base = target.response_topic or protocol.response_topic(target.tenant, spec.prefix)
        self.reply_topic = f"{base}/{self.client_id}"
        if spec.loopback:
            self.request_topic = self.reply_topic
        self.templates = templates
        self.on_reply = on_reply
        self.inflight: dict[bytes, int] = {}
        self.latency = LatencyRecorder()
        self.errors: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.duplicates = 0
        self.unexpected = 0
        self.last_reply_ns = 0
        self._seq = itertools.count()
        self.conn = _Connection(self, spec)

    @property
    def sent(self) -> int:
        # Every id issued is either still in flight or was answered (success or error).
        return len(self.latency) + sum(self.errors.values()) + len(self.inflight)

    @property
    def failure(self) -> str | None:
        return self.conn.failure

    def send(self) -> None:
        n = next(self._seq)  # atomic under the GIL, so senders in several threads never share an id
        rid = self.tag + b"%d" % n
        head, tail = self.templates[n % len(self.templates)]
        self.inflight[rid] = time.perf_counter_ns()
        self.conn.publish(rid, head + rid + tail)

    def send_many(self, count: int) -> None:
        """Send `count` requests in one go (open loop catching up with its schedule)."""
        batch = []
        templates = self.templates
        for _ in range(count):
            n = next(self._seq)
            rid = self.tag + b"%d" % n
            head, tail = templates[n % len(templates)]
            batch.append((rid, head + rid + tail))
        now = time.perf_counter_ns()
        for rid, _ in batch:
            self.inflight[rid] = now
        self.conn.publish_many(batch)

    def on_answer(self, rid: bytes | None, payload: bytes, now: int) -> None:
        """Called from the connection's network thread for every answer."""
        sent_ns = self.inflight.pop(rid, None) if rid is not None else None
        if sent_ns is None:
            self._stray(rid)
            return
        self.last_reply_ns = now
        try:
            body = protocol.decode_response(payload)
        except ValueError:
            body = {"error": {"code": "undecodable_answer"}}
        error = body.get("error")
        if error is None:
            self.latency.add(now - sent_ns)
            version = body.get("version")
            if version is not None:
                self.versions[f"{body.get('model')}:{version}"] += 1
        else:
            self.errors[str(error.get("code") if isinstance(error, dict) else error)] += 1
        if self.on_reply is not None:
            self.on_reply(self, rid)  # type: ignore[arg-type]

    def on_refused(self, rid: bytes) -> None:
        """The broker refused this request's PUBLISH: no server will see it, so it is an error now
        (neither answered nor lost) and, in closed loop, its slot goes to a new request."""
        if self.inflight.pop(rid, None) is None:
            return
        self.errors[protocol.ErrorCode.REFUSED_BY_BROKER] += 1
        if self.on_reply is not None:
            self.on_reply(self, rid)

    def _stray(self, rid: bytes | None) -> None:
        """An answer to nothing in flight: a duplicate if it names one of our past ids."""
        if rid is not None and rid.startswith(self.tag):
            tail = rid[len(self.tag) :]
            if tail.isdigit() and int(tail) < self.sent:
                self.duplicates += 1
                return
        self.unexpected += 1

    def result(self) -> TenantResult:
        counters = Counters(
            sent=self.sent,
            answered=len(self.latency),
            errors=Counter(self.errors),
            lost=len(self.inflight),
            duplicates=self.duplicates,
            unexpected=self.unexpected,
        )
        return TenantResult(self.target.tenant, counters, self.latency.summary())

    def close(self) -> None:
        self.conn.close()


class _ClosedLoop:
    """Closed-loop bookkeeping: each reply (or a request that timed out) hands its slot to a new
    request, until the run stops or a counted run has issued its `budget`."""

    def __init__(self, budget: int | None) -> None:
        self.stopped = False
        self._budget = budget
        self._issued = 0
        self._lock = threading.Lock()
        self.released: set[bytes] = set()

    def take(self) -> bool:
        if self.stopped:
            return False
        if self._budget is None:
            return True
        with self._lock:
            if self._issued >= self._budget:
                return False
            self._issued += 1
            return True

    @property
    def exhausted(self) -> bool:
        """Every request of a counted run has been issued."""
        return self._budget is not None and self._issued >= self._budget

    def on_reply(self, lane: _Lane, rid: bytes) -> None:
        if self.released:
            try:
                self.released.remove(rid)
                return  # its slot was already given to another request
            except KeyError:
                pass
        if self.take():
            lane.send()

    def release_stuck(self, lanes: Sequence[_Lane], older_than_ns: int) -> None:
        """Give the slot of a request unanswered for too long to a new one (it may still be answered)."""
        for lane in lanes:
            for rid, sent_ns in list(lane.inflight.items()):
                if sent_ns < older_than_ns and rid not in self.released:
                    self.released.add(rid)
                    if self.take():
                        lane.send()


def run_load(spec: LoadSpec) -> LoadResult:
    """Connect one client per tenant, run the load, wait out the grace period and report."""
    spec.validate()
    templates = request_templates(spec.windows or synthetic_windows(spec.window), spec.batch, spec.model)
    closed = _ClosedLoop(spec.count) if spec.concurrency is not None else None
    lanes = [_Lane(t, spec, templates, closed.on_reply if closed else None) for t in spec.targets]
    try:
        _connect(lanes, spec)
        cpu_start = time.process_time()
        send_start = time.perf_counter_ns()
        if closed is not None:
            _run_closed(lanes, spec, closed)
        else:
            _run_open(lanes, spec)
        send_end = time.perf_counter_ns()
        _drain(lanes, spec.grace)
        cpu_seconds = time.process_time() - cpu_start
        tenants = [lane.result() for lane in lanes]
    finally:
        for lane in lanes:
            lane.close()
    counters = Counters()
    for t in tenants:
        counters.merge(t.counters)
    last = max((lane.last_reply_ns for lane in lanes), default=0)
    versions: Counter[str] = Counter()
    for lane in lanes:
        versions.update(lane.versions)
    result = LoadResult(
        mode="closed" if closed is not None else "open",
        engine=spec.resolved_engine,
        target_rate=spec.rate,
        concurrency=spec.concurrency,
        batch=spec.batch,
        qos=spec.qos,
        counters=counters,
        latency=summarize_ns(s for lane in lanes for s in lane.latency.samples_ns),
        send_seconds=(send_end - send_start) / 1e9,
        elapsed_seconds=(max(last, send_end) - send_start) / 1e9 if counters.replied else (send_end - send_start) / 1e9,
        tenants=tenants,
        versions=dict(versions),
        cpu_seconds=cpu_seconds,
        failures={lane.target.tenant: lane.failure for lane in lanes if lane.failure},
    )
    event(log, "load_done", **{k: v for k, v in result.to_dict().items() if k != "tenants"})
    return result


def _connect(lanes: Sequence[_Lane], spec: LoadSpec) -> None:
    for lane in lanes:
        lane.conn.start()
    deadline = time.monotonic() + spec.connect_timeout
    for lane in lanes:
        try:
            lane.conn.wait_ready(max(0.0, deadline - time.monotonic()))
        except ConnectionError as exc:
            raise ConnectionError(f"tenant {lane.target.tenant} at {spec.host}:{spec.port}: {exc}") from None


def _run_open(lanes: Sequence[_Lane], spec: LoadSpec) -> None:
    """Request i is due at start + i/rate, round-robin over tenants; whatever is due is sent at
    once (one write per lane), so a late wake-up catches up instead of lowering the rate."""
    assert spec.rate is not None
    n_lanes = len(lanes)
    limit = spec.count if spec.count is not None else math.inf
    end = time.perf_counter() + spec.duration if spec.duration is not None else math.inf
    start = time.perf_counter()
    interval = 1.0 / spec.rate
    sent = 0
    while sent < limit and not _all_failed(lanes):
        now = time.perf_counter()
        if now >= end:
            break
        due = int(min(limit, int((now - start) * spec.rate) + 1))
        if due > sent:
            for k, lane in enumerate(lanes):
                # requests sent..due-1 go to lane (i % n_lanes)
                share = len(range(sent + (k - sent) % n_lanes, due, n_lanes))
                if share:
                    lane.send_many(share)
            sent = due
        ahead = start + sent * interval - time.perf_counter()
        if ahead > 0:
            time.sleep(min(ahead, 0.01))


def _run_closed(lanes: Sequence[_Lane], spec: LoadSpec, closed: _ClosedLoop) -> None:
    """Prime every lane with its share of the concurrency; replies keep the pipes full."""
    assert spec.concurrency is not None
    shares = [
        spec.concurrency // len(lanes) + (1 if i < spec.concurrency % len(lanes) else 0) for i in range(len(lanes))
    ]
    for lane, share in zip(lanes, shares, strict=True):
        for _ in range(share):
            if closed.take():
                lane.send()
    end = time.monotonic() + spec.duration if spec.duration is not None else math.inf
    timeout_ns = int(spec.request_timeout * 1e9)
    while time.monotonic() < end and not closed.exhausted and not _all_failed(lanes):
        time.sleep(_MONITOR_INTERVAL_S)
        closed.release_stuck(lanes, time.perf_counter_ns() - timeout_ns)
    closed.stopped = True


def _drain(lanes: Sequence[_Lane], grace: float) -> None:
    """Wait for outstanding answers; what is still outstanding after `grace` seconds is lost."""
    deadline = time.monotonic() + grace
    while any(lane.inflight for lane in lanes) and time.monotonic() < deadline and not _all_failed(lanes):
        time.sleep(0.01)


def _all_failed(lanes: Sequence[_Lane]) -> bool:
    """Every connection broke (engine lean): nothing more can be sent or answered."""
    return all(lane.failure for lane in lanes)
