"""Live traffic as training data, and drift events, from the trainer's persistent MQTT session.

Servers publish the windows of every request that carries a `series_id` (QoS 1, topic
`<prefix>/_records/<tenant>/<series_id>`). The trainer owns a persistent session (fixed client
id, clean_start=False, long session expiry) subscribed to those topics at QoS 1, so the broker
queues the records between two CronJob runs on its own volume; any number of server replicas on
any nodes can publish, and no volume is shared (RWO is enough). Design and limits:
docs/lifecycle.md.

Requests carry readings in order but not their times, and one replica sees only every N-th
window of a series. Each record names its server (`src`) and that server's sequence number
(`seq`): one server's windows are in order (MQTT keeps a subscriber's order) and, with fewer
replicas than readings per window, overlap each other, so they chain into runs of consecutive
readings (window k+1 repeats window k shifted by one or more readings). Runs from different
servers are then joined where they overlap exactly. Runs that overlap nothing stay separate
segments, which cleaning treats as gaps that no training window crosses.

Isolation: a series is (tenant, series_id), never a series_id alone: two tenants' readings under
one id are two series. The trainer subscribes only to the records of the tenants its config names
(`tenants`), keeps only records of its own model, and counts drift events only of those tenants.

The stitched history is kept, bounded to `records_max` readings per series (oldest rotate out),
as a retained message `<prefix>/_trainer/<name>/history/<tenant>/<series_id>` on the same broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mlserving_common import mqtt, protocol
from mlserving_common.logs import event
from mlserving_common.series import overlap_shift
from mlserving_training.config import ConfigError, TrainConfig

Emit = Callable[[str], None]
log = logging.getLogger("mlserving.training.records")
Window = tuple[float, ...]
#: (tenant, series_id): the identity of a live series
SeriesKey = tuple[str, str]


def series_label(key: SeriesKey) -> str:
    """`tenant:series_id` for logs and messages (tenant names hold no ':')."""
    return f"{key[0]}:{key[1]}"


class RecordsError(RuntimeError):
    """The broker session could not be used (connection, credentials, ACL)."""


#: A connection lost mid-drain comes back on the same persistent session.
RECONNECT = mqtt.Backoff(min_delay=0.5, max_delay=5.0)


# --------------------------------------------------------------------------------------------
# Stitching: ordered windows -> segments of consecutive readings
# --------------------------------------------------------------------------------------------


#: Above this many segments joining is skipped (a pathological history: windows that never overlap).
MAX_JOIN_SEGMENTS = 2000


@dataclass
class SeriesHistory:
    """Runs of consecutive readings of one series, oldest first, each with the receipt time of its
    newest window (which orders them); bounded by `trim(limit)`."""

    segments: list[list[float]] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    #: whose series this is; a retained history without a tenant (written before tenant isolation)
    #: is not trusted: it may mix tenants
    tenant: str = ""
    series_id: str = ""

    @property
    def readings(self) -> int:
        return sum(len(s) for s in self.segments)

    def add_records(self, records: Iterable[Record]) -> None:
        """Chain each source's windows in its own order, then join the runs that overlap."""
        by_source: dict[str, list[Record]] = {}
        for record in records:
            by_source.setdefault(record[0], []).append(record)
        runs = list(zip(self.segments, self.ends, strict=True))
        window = 0
        for items in by_source.values():
            runs += _chain(sorted(items, key=lambda r: (r[1], r[2])))
            window = max(window, max(len(r[3]) for r in items))
        # Runs must share at least window - 2 readings to be joined: a replica's next window
        # after the previous drain overlaps its last one by window - N (N replicas).
        runs = _join_all(runs, max(2, window - 2)) if window else runs
        self.segments, self.ends = [], []
        for segment, end_t in sorted(runs, key=lambda run: run[1]):
            self.segments.append(segment)
            self.ends.append(end_t)

    def trim(self, limit: int) -> int:
        """Drop the oldest readings beyond `limit`; returns how many rotated out."""
        excess = self.readings - limit
        dropped = max(excess, 0)
        while excess > 0 and self.segments:
            first = self.segments[0]
            if len(first) <= excess:
                excess -= len(first)
                self.segments.pop(0)
                self.ends.pop(0)
            else:
                del first[:excess]
                excess = 0
        return dropped

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"v": 2, "tenant": self.tenant, "series_id": self.series_id, "segments": self.segments, "ends": self.ends}
        )

    @classmethod
    def from_json(cls, payload: bytes) -> SeriesHistory:
        body = orjson.loads(payload)
        if not isinstance(body, dict) or not isinstance(body.get("segments"), list):
            raise ValueError("not a series history")
        segments = [[float(v) for v in s] for s in body["segments"]]
        ends = [float(t) for t in body.get("ends", [])]
        tenant, series_id = body.get("tenant", ""), body.get("series_id", "")
        return cls(
            segments,
            ends if len(ends) == len(segments) else [0.0] * len(segments),
            tenant if isinstance(tenant, str) else "",
            series_id if isinstance(series_id, str) else "",
        )


#: (source, order within the source, index within the request, window)
Record = tuple[str, float, int, Window]


def _chain(items: list[Record]) -> list[tuple[list[float], float]]:
    """One source's windows, in its order, as runs: a window overlapping the previous one extends
    the run (a repeat adds nothing), one that does not starts a new run."""
    runs: list[tuple[list[float], float]] = []
    current: list[float] | None = None
    previous: list[float] = []
    for _, order, _, window in items:
        values = [float(v) for v in window]
        if not values:
            continue
        k = overlap_shift(previous, values) if current is not None else None
        if current is None or k is None:
            current = list(values)
            runs.append((current, order))
        elif k:
            current.extend(values[len(values) - k :])
            runs[-1] = (current, order)
        previous = values
    return runs


def _join_all(runs: list[tuple[list[float], float]], n: int) -> list[tuple[list[float], float]]:
    """Merge runs where one's first `n` readings occur in another and the whole overlap agrees.

    Readings are the clients' exact floats, so an accidental match of `n` of them is negligible.
    """
    runs = [r for r in runs if r[0]]
    if len(runs) > MAX_JOIN_SEGMENTS:
        return runs
    changed = True
    while changed:
        changed = False
        heads: dict[tuple[float, ...], list[int]] = {}
        for i, (segment, _) in enumerate(runs):
            heads.setdefault(tuple(segment[:n]), []).append(i)
        for i, (first, first_end) in enumerate(runs):
            for p in range(len(first) - n + 1):
                for j in heads.get(tuple(first[p : p + n]), ()):
                    if j == i:
                        continue
                    second, second_end = runs[j]
                    overlap = first[p:]
                    if second[: len(overlap)] != overlap[: len(second)]:
                        continue
                    joined = first[:p] + second if len(second) > len(overlap) else first
                    runs[i] = (joined, max(first_end, second_end))
                    del runs[j]
                    changed = True
                    break
                if changed:
                    break
            if changed:
                break
    return runs


def stitch(history: SeriesHistory, records: Iterable[Record]) -> SeriesHistory:
    """Add (source, order, index within the request, window) records to the history."""
    history.add_records(records)
    return history


def history_rows(
    series_id: str, history: SeriesHistory, start: int, interval_s: int, gap_steps: int
) -> list[tuple[str, str, int, str]]:
    """CSV-like rows (station_id, parameter_id, reading_time, value) of the stitched readings.

    Times are synthetic (`interval_s` apart from `start`); segments are `gap_steps` intervals
    apart so that cleaning splits them instead of interpolating across the unknown gap.
    """
    station, _, parameter = series_id.partition("/")
    rows, t = [], start
    for segment in history.segments:
        for value in segment:
            rows.append((station, parameter, t, repr(float(value))))
            t += interval_s
        t += gap_steps * interval_s
    return rows


# --------------------------------------------------------------------------------------------
# The persistent session
# --------------------------------------------------------------------------------------------


def history_topic(config: TrainConfig, key: SeriesKey | None = None) -> str:
    """Retained history of one (tenant, series), or the filter of all of them (key None)."""
    base = f"{config.topic_prefix}/_trainer/{config.model_name}/history"
    return f"{base}/{key[0]}/{protocol.topic_level(key[1])}" if key else f"{base}/#"


@dataclass
class Drained:
    """What one drain brought: live histories per (tenant, series) (merged, trimmed) and drift
    events; `ignored` counts records left out (another tenant, another model, unreadable)."""

    histories: dict[SeriesKey, SeriesHistory]
    new_windows: dict[SeriesKey, int]
    drift_events: list[dict[str, Any]]
    messages: int
    rotated: dict[SeriesKey, int]
    session_present: bool
    ignored: dict[str, int] = field(default_factory=dict)

    def drift_for(self, model: str, tenants: Iterable[str]) -> list[dict[str, Any]]:
        """Drift turned on for `model` by one of `tenants`: another tenant's drift never triggers."""
        wanted = set(tenants)
        return [
            e for e in self.drift_events if e.get("model") == model and e.get("tenant") in wanted and e.get("drift", 1)
        ]


def _password(config: TrainConfig) -> str | None:
    if not config.broker_password_file:
        return None
    try:
        return Path(config.broker_password_file).read_text().strip("\r\n")
    except OSError as exc:
        raise ConfigError(f"broker_password_file: cannot read {config.broker_password_file} ({exc.strerror})") from None


class _Session:
    """A connection on the trainer's persistent session, collecting what the broker delivers.

    The first connect fails fast (a CronJob run should say why it cannot drain); a connection
    lost later comes back on the same session, and the broker redelivers what it had not had
    acknowledged. A record is acknowledged once collected (PUBACK after on_message returns).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self._cond = threading.Condition()
        self.session_present = False
        self.last_message = time.monotonic()
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.histories: dict[str, bytes] = {}  # topic -> retained payload
        self.events: list[dict[str, Any]] = []
        self.messages = 0
        self.bad = 0
        options = mqtt.ConnectOptions(
            config.broker_host,
            config.broker_port,
            client_id=config.session_client_id,
            username=config.broker_username or None,
            password=_password(config) if config.broker_username else None,
            tls_ca_file=config.broker_tls_ca_file or None,
            clean_start=False,
            session_expiry=config.session_expiry_s,
            reconnect=RECONNECT,
        )
        self.client = mqtt.Connection(options, on_message=self._on_message)

    # network thread
    def _on_message(self, message: mqtt.Message) -> None:
        prefix = self.config.topic_prefix
        with self._cond:
            self.last_message = time.monotonic()
            self.messages += 1
            topic = message.topic
            try:
                if topic.startswith(f"{prefix}/_records/"):
                    self.records.append((topic, protocol.decode_record(message.payload)))
                elif topic.startswith(f"{prefix}/_events/"):
                    body = orjson.loads(message.payload)
                    if isinstance(body, dict):
                        self.events.append({**body, "_topic": topic})
                elif topic.startswith(f"{prefix}/_trainer/"):
                    self.histories[topic] = bytes(message.payload)
            except (ValueError, orjson.JSONDecodeError):
                self.bad += 1

    # operations
    def connect(self, timeout: float = 30.0) -> None:
        try:
            connack = self.client.connect(timeout)
        except mqtt.ConnectRefused as exc:
            self.close()
            raise RecordsError(f"broker refused the trainer session: {exc}") from None
        except (mqtt.MqttError, TimeoutError) as exc:
            self.close()
            raise RecordsError(f"broker {self.config.broker_host}:{self.config.broker_port}: {exc}") from None
        self.session_present = connack.session_present

    def subscribe(self, filters: list[tuple[str, bool]], timeout: float = 30.0) -> None:
        """(filter, no_local) pairs at QoS 1; raises if the broker refuses any (ACL)."""
        ack = self.client.subscribe([mqtt.subscription(topic, qos=1, no_local=no_local) for topic, no_local in filters])
        try:
            ack.wait(timeout)
        except TimeoutError:
            raise RecordsError("no SUBACK from the broker") from None
        except mqtt.MqttError as exc:
            raise RecordsError(f"no SUBACK from the broker: {exc}") from None
        if ack.refused:
            raise RecordsError(f"broker refused subscriptions {ack.refused} (check the trainer's ACL)")

    def wait_idle(self, idle: float, started_wall: float) -> None:
        """Until no message came for `idle` s, or fresh records (newer than the drain) flowed for `idle` s."""
        fresh_since: float | None = None
        while True:
            with self._cond:
                quiet = time.monotonic() - self.last_message
                if fresh_since is None and any(r.get("t", 0) >= started_wall for _, r in self.records[-50:]):
                    fresh_since = time.monotonic()
            if quiet >= idle or (fresh_since is not None and time.monotonic() - fresh_since >= idle):
                return
            time.sleep(min(0.1, idle / 4))

    def publish_retained(self, topic: str, payload: bytes, timeout: float = 30.0) -> None:
        try:
            delivery = self.client.publish(topic, payload, qos=1, retain=True)
            delivery.wait(timeout)
        except (TimeoutError, mqtt.MqttError) as exc:
            raise RecordsError(f"history {topic} was not acknowledged by the broker: {exc}") from None
        if delivery.refused:
            raise RecordsError(f"history {topic} was refused by the broker: {delivery.reason}")

    def close(self) -> None:
        self.client.close()


def drain(config: TrainConfig, emit: Emit = print) -> Drained:
    """Connect the persistent session, take what the broker queued, merge it into the live history.

    The first run creates the session (records published before it are not kept). The merged,
    trimmed history is republished (retained) before the caller trains, so a crash afterwards
    loses nothing the broker had already handed over.
    """
    started_wall = time.time()
    session = _Session(config)
    session.connect()
    try:
        # Records are subscribed only when used: a subscription nobody drains would fill the queue.
        filters = [(protocol.events_topic("drift", config.topic_prefix), False)]
        if config.records:
            # One filter per tenant named: nobody else's records are even delivered.
            filters += [
                (protocol.records_filter(tenant, config.series, config.topic_prefix), False)
                for tenant in config.tenants
            ]
            filters.append((history_topic(config), True))
        session.subscribe(filters)
        session.wait_idle(config.records_idle_seconds, started_wall)
        with session._cond:
            records, events, histories_raw = list(session.records), list(session.events), dict(session.histories)
            messages, bad = session.messages, session.bad
        histories = _load_histories(config, histories_raw)
        by_series, ignored = _select_records(config, records)
        ignored["unreadable"] = bad
        rotated: dict[SeriesKey, int] = {}
        if config.records:
            for key, items in by_series.items():
                history = histories.setdefault(key, SeriesHistory(tenant=key[0], series_id=key[1]))
                stitch(history, items)
                rotated[key] = history.trim(config.records_max)
                session.publish_retained(history_topic(config, key), history.to_json())
    finally:
        session.close()
    result = Drained(
        histories,
        {k: len(v) for k, v in by_series.items()},
        events,
        messages,
        rotated,
        session.session_present,
        ignored,
    )
    new_windows = {series_label(k): n for k, n in sorted(result.new_windows.items())}
    event(
        log,
        "records drained",
        client_id=config.session_client_id,
        session_present=session.session_present,
        tenants=config.tenants,
        messages=messages,
        ignored=ignored,
        new_windows=new_windows,
        drift_events=len(events),
        readings={series_label(k): h.readings for k, h in histories.items()},
        rotated_out={series_label(k): n for k, n in rotated.items()},
    )
    emit(
        f"records: session {config.session_client_id} ({'resumed' if session.session_present else 'new'}),"
        f" tenants {', '.join(config.tenants) or '-'}, {messages} messages, new windows {new_windows or '{}'},"
        f" ignored {ignored}, {len(events)} drift event(s); live history "
        + (", ".join(f"{series_label(k)}: {h.readings} readings" for k, h in sorted(histories.items())) or "empty")
    )
    return result


def _load_histories(config: TrainConfig, raw: dict[str, bytes]) -> dict[SeriesKey, SeriesHistory]:
    """Retained histories of the tenants this trainer serves; ones without a tenant are dropped
    (written before tenant isolation, they may mix two tenants' readings)."""
    histories: dict[SeriesKey, SeriesHistory] = {}
    for topic, payload in raw.items():
        if not payload:  # a cleared retained message
            continue
        try:
            history = SeriesHistory.from_json(payload)
        except (ValueError, orjson.JSONDecodeError):
            event(log, "history unreadable, starting over", logging.WARNING, topic=topic)
            continue
        if not history.tenant or not history.series_id:
            event(log, "history without a tenant ignored, starting over", logging.WARNING, topic=topic)
            continue
        if history.tenant in config.tenants:
            histories[(history.tenant, history.series_id)] = history
    return histories


def _select_records(
    config: TrainConfig, records: list[tuple[str, dict[str, Any]]]
) -> tuple[dict[SeriesKey, list[Record]], dict[str, int]]:
    """Records of this trainer's tenants and model only, grouped by (tenant, series_id).

    The tenant is the topic's (the broker's ACL decides who may publish there) and must match
    the payload's; the model is the registry name the server answered with.
    """
    prefix = f"{config.topic_prefix}/_records/"
    wanted = set(config.tenants)
    ignored = {"other_tenant": 0, "other_model": 0}
    by_series: dict[SeriesKey, list[Record]] = {}
    for topic, record in records:
        tenant = topic[len(prefix) :].split("/", 1)[0] if topic.startswith(prefix) else ""
        if tenant not in wanted or record.get("tenant") != tenant:
            ignored["other_tenant"] += 1
            continue
        if record.get("model") != config.model_name:
            ignored["other_model"] += 1
            continue
        source = str(record.get("src", ""))
        order = float(record["seq"]) if isinstance(record.get("seq"), (int, float)) else float(record["t"])
        items = by_series.setdefault((tenant, record["series_id"]), [])
        for index, window in enumerate(record["windows"]):
            items.append((source, order, index, tuple(window)))
    return by_series, ignored


def live_frame_rows(
    config: TrainConfig, drained: Drained, key: SeriesKey, after: int | None
) -> list[tuple[str, str, int, str]]:
    """Rows of the live history of (tenant, series_id), placed after time `after` (the bootstrap data's end)."""
    history = drained.histories.get(key)
    if history is None or not history.segments:
        return []
    gap = config.max_gap_fill + 2
    start = (after + gap * config.records_interval_s) if after is not None else 0
    return history_rows(key[1], history, start, config.records_interval_s, gap)
