"""The ml-serving wire contract, version 1 (documented in docs/protocol.md).

Server, client, load generator, chart test hook and demo all import this module, so
topic names, request/response shapes and error codes exist in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "ml"
DEFAULT_SHARE_GROUP = "ml-serving"
MAX_ID_LENGTH = 128
LEGACY_WINDOW = 6
LEGACY_KEYS = tuple(f"norm_{i}" for i in range(1, LEGACY_WINDOW + 1))


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

    #: Codes after which resending the same request may succeed.
    RETRYABLE = frozenset({"rate_limited", "overloaded", "model_unavailable", "internal"})


def request_topic(tenant: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Default topic a tenant's clients publish requests to."""
    return f"{prefix}/{tenant}/requests"


def response_topic(tenant: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Default topic for answers to requests that carry no MQTT v5 Response Topic."""
    return f"{prefix}/{tenant}/responses"


def shared_subscription(topic: str, group: str = DEFAULT_SHARE_GROUP) -> str:
    """Shared subscription so that N server replicas split a tenant's requests."""
    return f"$share/{group}/{topic}"


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
    return orjson.dumps({"v": PROTOCOL_VERSION, "tenant": tenant, "series_id": series_id, "model": model,
                         "t": at, "src": source, "seq": seq, "windows": windows})


def decode_record(payload: bytes) -> dict[str, Any]:
    """A record as written by encode_record; ValueError if it is not one."""
    body = orjson.loads(payload)
    if not isinstance(body, dict) or not isinstance(body.get("series_id"), str) or not isinstance(body.get("windows"), list):
        raise ValueError("not a live-traffic record")
    if not isinstance(body.get("t"), (int, float)):
        raise ValueError("record without a time")
    for window in body["windows"]:
        if not isinstance(window, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window):
            raise ValueError("record window is not a list of numbers")
    return body


_NUMBER_TYPES = frozenset({int, float})  # exact types: bool is a subclass of int and must not pass


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

    `normalized` is true only for the tutorial's legacy payload, whose values are already
    z-scored; the server then skips normalisation and answers in normalised units.
    """

    id: str | None
    instances: tuple[tuple[float, ...], ...]
    model: str | None = None
    series_id: str | None = None
    batched: bool = False
    normalized: bool = False


def _finite_series(raw: Any, field: str, request_id: str | None) -> tuple[float, ...]:
    if not isinstance(raw, list) or not raw:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'{field}' must be a non-empty list of numbers", request_id)
    values = []
    for i, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'{field}[{i}]' is not a number", request_id)
        value = float(item)
        if not math.isfinite(value):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"'{field}[{i}]' is not finite", request_id)
        values.append(value)
    return tuple(values)


def _well_formed_instances(raw: list[Any]) -> tuple[tuple[float, ...], ...] | None:
    """Validate a batch with C-level loops only (bulk clients send hundreds of series per
    message, and a Python loop per number dominated the server's time); None if any check fails."""
    if not all(type(row) is list and row for row in raw):
        return None
    flat = list(chain.from_iterable(raw))
    if not set(map(type, flat)) <= _NUMBER_TYPES or not all(map(math.isfinite, flat)):
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
    if version != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version!r} is not supported", rid)
    model = _optional_str(body, "model", rid)
    series_id = _optional_str(body, "series_id", rid)

    if "series" in body:
        if "instances" in body:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "give either 'series' or 'instances', not both", rid)
        return Request(rid, (_finite_series(body["series"], "series", rid),), model, series_id)
    if "instances" in body:
        raw = body["instances"]
        if not isinstance(raw, list) or not raw:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "'instances' must be a non-empty list of series", rid)
        if len(raw) > max_instances:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"{len(raw)} instances, limit is {max_instances}", rid
            )
        instances = _well_formed_instances(raw)
        if instances is None:  # something is wrong: validate item by item to name it
            instances = tuple(_finite_series(s, f"instances[{i}]", rid) for i, s in enumerate(raw))
        return Request(rid, instances, model, series_id, batched=True)
    if all(key in body for key in LEGACY_KEYS):
        values = _finite_series([body[key] for key in LEGACY_KEYS], "norm_1..norm_6", rid)
        return Request(rid, (values,), model, series_id, normalized=True)
    raise ProtocolError(ErrorCode.INVALID_REQUEST, "request needs 'series', 'instances' or norm_1..norm_6", rid)


def encode_request(
    series: list[float] | None = None,
    *,
    request_id: str | None = None,
    instances: list[list[float]] | None = None,
    model: str | None = None,
    series_id: str | None = None,
) -> bytes:
    """Client-side encoder, the mirror image of parse_request."""
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
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_prediction(
    request: Request, predictions: list[float], tenant: str, model: str, version: str
) -> bytes:
    """Successful answer: one `prediction`, or `predictions` for a batched request."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request.id, "tenant": tenant, "model": model, "version": version}
    if request.batched:
        body["predictions"] = predictions
    else:
        body["prediction"] = predictions[0]
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
