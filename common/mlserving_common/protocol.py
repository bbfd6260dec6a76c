"""The ml-serving wire contract, version 1 (documented in docs/protocol.md).

Server, client, load generator, chart test hook and demo all import this module, so
topic names, request/response shapes and error codes exist in exactly one place.
"""

from __future__ import annotations

import math
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "ml"
DEFAULT_SHARE_GROUP = "ml-serving"
MAX_ID_LENGTH = 128
LEGACY_WINDOW = 6
#: The tutorial's legacy payload: norm_1 is the NEWEST reading (lag 1), norm_6 the oldest.
LEGACY_KEYS = tuple(f"norm_{i}" for i in range(1, LEGACY_WINDOW + 1))
#: Largest finite float32: the models compute in float32, so a reading beyond it would become inf.
FLOAT32_MAX = 3.4028234663852886e38


class ErrorCode:
    """Error codes a response may carry; clients switch on these strings."""

    BAD_JSON = "bad_json"
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_MODEL = "unknown_model"
    WRONG_WINDOW = "wrong_window"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL = "internal"
    #: Never sent by a server: a client reports it when the broker answers its request PUBLISH
    #: with a PUBACK reason code >= 0x80 (the tenant's backlog or publish budget is full, or the
    #: publish is not authorized), so the request fails at once instead of looking lost.
    REFUSED_BY_BROKER = "refused_by_broker"

    #: Codes after which resending the same request may succeed.
    RETRYABLE = frozenset({"rate_limited", "overloaded", "model_unavailable", "internal", "refused_by_broker"})


def request_topic(tenant: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Default topic a tenant's clients publish requests to."""
    return f"{prefix}/{tenant}/requests"


def response_topic(tenant: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Default topic for answers to requests that carry no MQTT v5 Response Topic."""
    return f"{prefix}/{tenant}/responses"


def shared_subscription(topic: str, group: str = DEFAULT_SHARE_GROUP) -> str:
    """Shared subscription so that N server replicas split a tenant's requests."""
    return f"$share/{group}/{topic}"


#: What separates the owning username from the rest of a client id; it cannot be part of a
#: broker username (the broker plugin refuses such logins), so `tenant-a` never owns `tenant-a-b:x`.
CLIENT_ID_SEPARATOR = ":"
MAX_CLIENT_ID_LENGTH = 64


def owned_client_id(username: str, name: str = "") -> str:
    """`<username>:<name>`, or `<username>:<24 random hex digits>` when `name` is empty.

    The broker plugin (images/mosquitto/plugin) refuses a CONNECT whose client id does not start
    with the login's username and ':', so nobody can take over (kick, resume or wipe) another
    principal's session; the random form also makes service ids unguessable. A stable `name` is
    for sessions that must be resumed (the trainer's). The id is also a valid topic level (the
    client library answers on `<responses>/<client id>`) and at most 64 characters.
    """
    if not username or CLIENT_ID_SEPARATOR in username:
        raise ValueError(f"username: {username!r} must be non-empty and contain no {CLIENT_ID_SEPARATOR!r}")
    client_id = f"{username}{CLIENT_ID_SEPARATOR}{name or secrets.token_hex(12)}"
    if any(ch in client_id for ch in "/+#\x00") or len(client_id) > MAX_CLIENT_ID_LENGTH:
        raise ValueError(
            f"client id {client_id!r} must be at most {MAX_CLIENT_ID_LENGTH} characters without '/', '+', '#'"
        )
    return client_id


def registry_topic(model: str, version: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained topic that holds one model package in the broker-backed registry."""
    return f"{prefix}/_registry/{model}/{version}"


def registry_current_topic(model: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained pointer naming the version of `model` that should serve."""
    return f"{prefix}/_registry/{model}/current"


def topic_level(text: str) -> str:
    """A free label made safe inside a topic: wildcards and NUL become '_' (the payload keeps the original)."""
    return text.replace("+", "_").replace("#", "_").replace("\0", "_") or "_"


def records_topic(tenant: str, series_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Where servers publish the windows of requests that carry a series_id (docs/lifecycle.md)."""
    return f"{prefix}/_records/{tenant}/{topic_level(series_id)}"


def records_filter(tenant: str = "", series_id: str = "", prefix: str = DEFAULT_PREFIX) -> str:
    """Subscription for the records of one tenant (or all: '') and one series (or all: '')."""
    return f"{prefix}/_records/{tenant or '+'}/{topic_level(series_id) if series_id else '#'}"


def events_topic(kind: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Lifecycle events servers publish (not retained): `drift`, `rollback`."""
    return f"{prefix}/_events/{kind}"


def encode_record(
    tenant: str, series_id: str, model: str, windows: list[tuple[float, ...]], at: float, source: str = "", seq: int = 0
) -> bytes:
    """One request's windows as a live-traffic record: `t` is the server's receipt time (unix s),
    `src` the server and `seq` its running number, which orders one server's records exactly."""
    return orjson.dumps(
        {
            "v": PROTOCOL_VERSION,
            "tenant": tenant,
            "series_id": series_id,
            "model": model,
            "t": at,
            "src": source,
            "seq": seq,
            "windows": windows,
        }
    )


def decode_record(payload: bytes) -> dict[str, Any]:
    """A record as written by encode_record; ValueError if it is not one."""
    body = orjson.loads(payload)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("series_id"), str)
        or not isinstance(body.get("windows"), list)
    ):
        raise ValueError("not a live-traffic record")
    if type(body.get("t")) not in _NUMBER_TYPES:
        raise ValueError("record without a time")
    for window in body["windows"]:
        if not isinstance(window, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in window
        ):
            raise ValueError("record window is not a list of numbers")
    return body


_NUMBER_TYPES = frozenset({int, float})  # exact types: bool is a subclass of int and must not pass
_OUT_OF_RANGE = f"is outside float32's finite range (|x| <= {FLOAT32_MAX:.7g})"


class ProtocolError(Exception):
    """A request that cannot be served; becomes an error response, never a crash."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: one or more raw series windows for one model.

    `normalized` is true only for the tutorial's legacy payload (norm_1..norm_6): its window is
    already put oldest first, but its values are still in the client's own z-scored units; the
    server converts them with the tenant's `legacy` scaling and answers in those units.
    """

    id: str | None
    instances: tuple[tuple[float, ...], ...]
    model: str | None = None
    series_id: str | None = None
    batched: bool = False
    normalized: bool = False
    #: Forecast steps asked for (None: the one-step default, answered as `prediction` only).
    horizon: int | None = None
    #: Unix seconds of each instance's last reading (`time` / `times`); calendar models need them.
    times: tuple[float, ...] | None = None


#: Largest `horizon` a request may ask for; the model's own horizon is checked by the server.
MAX_HORIZON = 4096


def _extras(
    body: dict[str, Any], count: int, batched: bool, rid: str | None
) -> tuple[int | None, tuple[float, ...] | None]:
    """The optional `horizon` and `time` (series) / `times` (instances, one each) of a request."""
    horizon = body.get("horizon")
    if horizon is not None and (type(horizon) is not int or not 1 <= horizon <= MAX_HORIZON):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'horizon' must be an integer 1..{MAX_HORIZON}", rid)
    key, other = ("times", "time") if batched else ("time", "times")
    if other in body:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            "'time' goes with 'series', 'times' (one per instance) with 'instances'",
            rid,
        )
    raw = body.get(key)
    if raw is None:
        return horizon, None
    items = raw if batched else [raw]
    if (
        not isinstance(items, list)
        or len(items) != count
        or not numbers_fit_float32(items)
        or not all(0 <= t <= 1e11 for t in items)
    ):
        what = f"a list of {count} unix times (seconds), one per instance" if batched else "a unix time in seconds"
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'{key}' must be {what} of the last reading", rid)
    return horizon, tuple(map(float, items))


def _number(item: Any, where: str, request_id: str | None) -> float:
    """One reading as a float the model can hold: not a bool, finite as a float32."""
    if type(item) not in _NUMBER_TYPES:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'{where}' is not a number", request_id)
    value = float(item)
    if not numbers_fit_float32((value,)):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'{where}' {_OUT_OF_RANGE}", request_id)
    return value


def numbers_fit_float32(flat: Sequence[Any]) -> bool:
    """All items are int/float (no bool) and finite as float32, checked with C-level loops only
    (bulk requests carry thousands of numbers): packing refuses what would round to inf, the sum
    (finite for any float32 values) catches NaN and inf themselves."""
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        return False
    try:
        struct.pack(f"<{len(flat)}f", *flat)
    except OverflowError:
        return False
    return math.isfinite(sum(flat))


def _finite_series(raw: Any, field: str, request_id: str | None) -> tuple[float, ...]:
    if not isinstance(raw, list) or not raw:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'{field}' must be a non-empty list of numbers", request_id)
    if numbers_fit_float32(raw):
        return tuple(map(float, raw))
    return tuple(_number(item, f"{field}[{i}]", request_id) for i, item in enumerate(raw))


def _well_formed_instances(raw: list[Any]) -> tuple[tuple[float, ...], ...] | None:
    """Validate a batch with C-level loops only (bulk clients send hundreds of series per
    message, and a Python loop per number dominated the server's time); None if any check fails."""
    if not all(type(row) is list and row for row in raw):
        return None
    if not numbers_fit_float32(list(chain.from_iterable(raw))):
        return None
    return tuple(tuple(map(float, row)) for row in raw)


def _optional_str(body: dict[str, Any], key: str, request_id: str | None) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"'{key}' must be a string of 1-{MAX_ID_LENGTH} characters", request_id
        )
    return value


def _request_id(body: dict[str, Any]) -> str | None:
    """Best-effort id so that even a rejected request's answer can be matched."""
    raw = body.get("id")
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_LENGTH:
        return raw
    return None


def parse_request(payload: bytes, max_bytes: int, max_instances: int) -> Request:
    """Decode and validate one request payload, raising ProtocolError with the reason."""
    if len(payload) > max_bytes:
        raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes, limit is {max_bytes}")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"payload is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "payload must be a JSON object")
    rid = _request_id(body)
    if "id" in body and body["id"] is not None and rid is None:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'id' must be a string of 1-{MAX_ID_LENGTH} characters")
    version = body.get("v", PROTOCOL_VERSION)
    if type(version) is not int:  # `true == 1` and `1.0 == 1` in Python; neither is version 1
        shown = orjson.dumps(version).decode()[:32]
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'v' must be an integer, got {shown}", rid)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version!r} is not supported", rid)
    model = _optional_str(body, "model", rid)
    series_id = _optional_str(body, "series_id", rid)

    if "series" in body:
        if "instances" in body:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "give either 'series' or 'instances', not both", rid)
        series = (_finite_series(body["series"], "series", rid),)
        if "horizon" in body or "time" in body or "times" in body:
            return Request(rid, series, model, series_id, False, False, *_extras(body, 1, False, rid))
        return Request(rid, series, model, series_id)
    if "instances" in body:
        raw = body["instances"]
        if not isinstance(raw, list) or not raw:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "'instances' must be a non-empty list of series", rid)
        if len(raw) > max_instances:
            raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"{len(raw)} instances, limit is {max_instances}", rid)
        instances = _well_formed_instances(raw)
        if instances is None:  # something is wrong: validate item by item to name it
            instances = tuple(_finite_series(s, f"instances[{i}]", rid) for i, s in enumerate(raw))
        if "horizon" in body or "time" in body or "times" in body:
            return Request(rid, instances, model, series_id, True, False, *_extras(body, len(instances), True, rid))
        return Request(rid, instances, model, series_id, batched=True)
    if all(key in body for key in LEGACY_KEYS):
        # norm_1 is the newest reading: reversed, the window is oldest first like `series`.
        values = tuple(_number(body[key], key, rid) for key in reversed(LEGACY_KEYS))
        return Request(rid, (values,), model, series_id, normalized=True)
    raise ProtocolError(ErrorCode.INVALID_REQUEST, "request needs 'series', 'instances' or norm_1..norm_6", rid)


def encode_request(
    series: list[float] | None = None,
    *,
    request_id: str | None = None,
    instances: list[list[float]] | None = None,
    model: str | None = None,
    series_id: str | None = None,
    horizon: int | None = None,
    time: float | None = None,
    times: list[float] | None = None,
) -> bytes:
    """Client-side encoder, the mirror image of parse_request (`time`: unix s of the last reading
    of `series`; `times`: one per instance; `horizon`: forecast steps wanted)."""
    if (series is None) == (instances is None):
        raise ValueError("give exactly one of series or instances")
    body: dict[str, Any] = {"id": request_id}
    if series is not None:
        body["series"] = series
    else:
        body["instances"] = instances
    if model is not None:
        body["model"] = model
    if series_id is not None:
        body["series_id"] = series_id
    for key, value in (("horizon", horizon), ("time", time), ("times", times)):
        if value is not None:
            body[key] = value
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_prediction(
    request: Request,
    predictions: list[float],
    tenant: str,
    model: str,
    version: str,
    forecasts: list[list[float]] | None = None,
) -> bytes:
    """Successful answer: one `prediction`, or `predictions` for a batched request (always the
    first forecast step); with a `horizon` request also `forecast` (the steps) or `forecasts`."""
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": request.id,
        "tenant": tenant,
        "model": model,
        "version": version,
    }
    if request.batched:
        body["predictions"] = predictions
        if forecasts is not None:
            body["forecasts"] = forecasts
    else:
        body["prediction"] = predictions[0]
        if forecasts is not None:
            body["forecast"] = forecasts[0]
    if request.normalized:
        body["normalized"] = True
    return orjson.dumps(body)


def encode_error(request_id: str | None, code: str, message: str, tenant: str | None = None) -> bytes:
    """Error answer; every request that cannot be served gets exactly one of these."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "error": {"code": code, "message": message}}
    if tenant is not None:
        body["tenant"] = tenant
    return orjson.dumps(body)


def decode_response(payload: bytes) -> dict[str, Any]:
    """Decode an answer; raises ValueError if it is not a JSON object."""
    body = orjson.loads(payload)
    if not isinstance(body, dict):
        raise ValueError("response is not a JSON object")
    return body
