"""Strict numbers in the wire contract: what float32 cannot hold and booleans are refused by name.

The model runs in float32: a reading above float32's finite range (3.4028235e38) used to pass the
"finite" check, became inf in the model and was answered as a successful forecast. JSON `true`
is not a number either, although Python's bool is an int (`"v": true` was accepted as version 1).
Every refusal must be `invalid_request` and name the field at fault.
"""

from __future__ import annotations

import orjson
import pytest

from mlserving_common import protocol
from mlserving_common.protocol import ErrorCode, ProtocolError

FLOAT32_MAX = 3.4028234663852886e38
WINDOW = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]
LEGACY_OK = {key: 0.1 * i for i, key in enumerate(protocol.LEGACY_KEYS)}


def refusal(body: dict) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_request(orjson.dumps(body), 1 << 20, 1024)
    return caught.value


@pytest.mark.parametrize("poison", [3.5e39, -3.5e39, 1e300, -1.7976931348623157e308, FLOAT32_MAX * 1.0000001])
@pytest.mark.parametrize(
    "build, field",
    [
        (lambda p: {"series": [*WINDOW[:5], p]}, "series[5]"),
        (lambda p: {"instances": [WINDOW, [p, *WINDOW[1:]]]}, "instances[1][0]"),
        (lambda p: {"instances": [[p] * 6 for _ in range(300)]}, "instances[0][0]"),  # the bulk fast path
        (lambda p: {**LEGACY_OK, "norm_3": p}, "norm_3"),
    ],
)
def test_values_outside_float32_are_invalid_and_named(poison, build, field) -> None:
    error = refusal({"id": "p", **build(poison)})
    assert error.code == ErrorCode.INVALID_REQUEST
    assert field in error.message and "float32" in error.message
    assert error.request_id == "p"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"series": [*WINDOW[:2], True, *WINDOW[3:]]}, "series[2]"),
        ({"instances": [WINDOW, [False, *WINDOW[1:]]]}, "instances[1][0]"),
        ({**LEGACY_OK, "norm_6": True}, "norm_6"),
        ({"series": WINDOW, "v": True}, "'v'"),
        ({"series": WINDOW, "v": False}, "'v'"),
        ({"series": WINDOW, "v": 1.0}, "'v'"),
        ({"series": WINDOW, "v": "1"}, "'v'"),
    ],
)
def test_booleans_and_non_integers_are_not_numbers(body, field) -> None:
    error = refusal({"id": "b", **body})
    assert error.code == ErrorCode.INVALID_REQUEST, error.message
    assert field in error.message


def test_float32_extremes_still_parse() -> None:
    """The boundary itself is a valid float32 (the server then refuses what the model cannot take)."""
    request = protocol.parse_request(
        orjson.dumps({"instances": [[FLOAT32_MAX, -FLOAT32_MAX, 0, 1, 2**63, -(2**63)]] * 3}), 1 << 20, 1024
    )
    assert request.instances[0][:2] == (FLOAT32_MAX, -FLOAT32_MAX)


def test_versions_other_than_one_stay_unsupported() -> None:
    assert refusal({"series": WINDOW, "v": 2}).code == ErrorCode.UNSUPPORTED_VERSION
    assert protocol.parse_request(orjson.dumps({"series": WINDOW, "v": 1}), 4096, 8).instances == (tuple(WINDOW),)


def test_records_with_a_boolean_time_are_refused() -> None:
    record = orjson.loads(protocol.encode_record("tenant-a", "S/1", "lstm", [tuple(WINDOW)], 1.5e9))
    assert protocol.decode_record(orjson.dumps(record))["t"] == 1.5e9
    with pytest.raises(ValueError, match="time"):
        protocol.decode_record(orjson.dumps({**record, "t": True}))
