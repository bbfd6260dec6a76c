"""Fuzzing the request parser: whatever arrives, the answer is a request or a ProtocolError.

parse_request runs on every message a tenant publishes, so anything it raises besides
ProtocolError would be a bug an attacker can trigger at will. Each ProtocolError must become an
error answer that encodes and decodes (the server answers every request exactly once), and the
client's encoder must round-trip through the parser. Example counts are bounded so the suite
stays fast; raise them locally with HYPOTHESIS_PROFILE=fuzz (see docs/security.md).
"""

from __future__ import annotations

import math
import os

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlserving_common import protocol
from mlserving_common.protocol import ErrorCode, ProtocolError, Request

MAX_BYTES = 4096
MAX_INSTANCES = 8
KNOWN_CODES = {v for k, v in vars(ErrorCode).items() if k.isupper() and isinstance(v, str)}

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# JSON values of any shape, biased towards the keys and value kinds the parser looks at.
KEYS = st.sampled_from(["id", "series", "instances", "model", "series_id", "v", *protocol.LEGACY_KEYS]) | st.text(
    max_size=8
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=140)
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=8) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)
SMALL_JSON = st.recursive(SCALARS, lambda children: st.lists(children, max_size=8), max_leaves=10)
# Text clients can actually send: orjson refuses lone surrogates on the client side.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=protocol.MAX_ID_LENGTH)
# Readings a model can take: finite as float32 (wider floats are refused, see below).
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32)


def check_outcome(payload: bytes) -> Request | ProtocolError:
    """Parse; on a ProtocolError check that the server's error answer for it encodes."""
    try:
        request = protocol.parse_request(payload, MAX_BYTES, MAX_INSTANCES)
    except ProtocolError as exc:
        assert exc.code in KNOWN_CODES, exc.code
        assert isinstance(exc.message, str) and exc.message
        assert exc.request_id is None or (isinstance(exc.request_id, str) and 0 < len(exc.request_id) <= 128)
        answer = protocol.decode_response(protocol.encode_error(exc.request_id, exc.code, exc.message, "tenant-a"))
        assert answer["error"] == {"code": exc.code, "message": exc.message}
        assert answer["id"] == exc.request_id and answer["v"] == protocol.PROTOCOL_VERSION
        return exc
    assert request.instances and len(request.instances) <= MAX_INSTANCES
    for instance in request.instances:
        assert instance and all(isinstance(x, float) and math.isfinite(x) for x in instance)
    return request


@PROFILE
@given(st.binary(max_size=MAX_BYTES + 64))
def test_arbitrary_bytes_are_parsed_or_refused_with_a_protocol_error(payload: bytes) -> None:
    check_outcome(payload)


@PROFILE
@given(JSON)
def test_arbitrary_json_is_parsed_or_refused_with_a_protocol_error(body: object) -> None:
    check_outcome(orjson.dumps(body))


@PROFILE
@given(
    st.dictionaries(KEYS, SMALL_JSON, max_size=3),
    st.sampled_from(["series", "instances", "legacy", "none"]),
)
def test_request_shaped_objects_are_parsed_or_refused(extra: dict, shape: str) -> None:
    """Near-valid requests (one field wrong) reach deeper branches than random JSON does."""
    body: dict = {"id": "fuzz", "series": [1.0, 2.0, 3.0]}
    if shape == "instances":
        body = {"id": "fuzz", "instances": [[1.0, 2.0], [3.0, 4.0]]}
    elif shape == "legacy":
        body = dict.fromkeys(protocol.LEGACY_KEYS, 0.5)
    elif shape == "none":
        body = {}
    body.update(extra)
    check_outcome(orjson.dumps(body))


@PROFILE
@given(st.binary(min_size=1, max_size=200), st.integers(min_value=0, max_value=200))
def test_mutated_valid_payloads_are_parsed_or_refused(noise: bytes, where: int) -> None:
    valid = protocol.encode_request([20.1, 20.4, 21.0, 21.6, 22.0, 22.3], request_id="abc", model="lstm")
    cut = where % (len(valid) + 1)
    check_outcome(valid[:cut] + noise + valid[cut + len(noise) :])


@PROFILE
@given(
    st.one_of(st.none(), TEXT),
    st.one_of(
        st.tuples(st.just("series"), st.lists(FINITE, min_size=1, max_size=32)),
        st.tuples(
            st.just("instances"), st.lists(st.lists(FINITE, min_size=1, max_size=8), min_size=1, max_size=MAX_INSTANCES)
        ),
    ),
    st.one_of(st.none(), TEXT),
    st.one_of(st.none(), TEXT),
)
def test_encode_request_round_trips_through_parse_request(request_id, data, model, series_id) -> None:
    kind, values = data
    kwargs = {"series": values} if kind == "series" else {"instances": values}
    payload = protocol.encode_request(request_id=request_id, model=model, series_id=series_id, **kwargs)
    request = protocol.parse_request(payload, 1 << 20, MAX_INSTANCES)
    expected = (tuple(values),) if kind == "series" else tuple(tuple(v) for v in values)
    assert request.instances == expected
    assert (request.id, request.model, request.series_id) == (request_id, model, series_id)
    assert request.batched is (kind == "instances") and request.normalized is False


@PROFILE
@given(st.lists(FINITE, min_size=1, max_size=8), st.booleans(), st.booleans())
def test_prediction_answers_encode_and_decode(predictions, batched, normalized) -> None:
    request = Request("id-1", tuple((1.0,) for _ in predictions), batched=batched, normalized=normalized)
    answer = protocol.decode_response(protocol.encode_prediction(request, predictions, "tenant-a", "lstm", "v3"))
    if batched:
        assert answer["predictions"] == predictions
    else:
        assert answer["prediction"] == predictions[0]
    assert answer.get("normalized", False) is normalized


@PROFILE
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=12), st.booleans())
def test_doubles_are_parsed_only_within_float32(values, batched) -> None:
    """A double beyond float32's range would be inf in the model: refused, naming the field."""
    body = {"instances": [values, values]} if batched else {"series": values}
    with np.errstate(over="ignore"):
        fits = bool(np.isfinite(np.array(values, dtype=np.float32)).all())  # numpy as the independent oracle
    try:
        request = protocol.parse_request(orjson.dumps(body), 1 << 20, MAX_INSTANCES)
    except ProtocolError as exc:
        assert not fits and exc.code == ErrorCode.INVALID_REQUEST and "float32" in exc.message
    else:
        assert fits and request.instances[0] == tuple(values)
