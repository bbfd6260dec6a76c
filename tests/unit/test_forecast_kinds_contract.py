"""Day-ahead and calendar models in the two contracts: package metadata and the wire protocol.

- metadata: `horizon` must match output.shape, calendar features widen input.shape and must be
  known names with an interval; a package without either field (every older one) still loads.
- calendar features: fixed, checkable values (Monday 00:00 UTC, noon) and the trainer's and the
  server's helpers giving the same bits.
- protocol: `horizon`, `time`, `times` parsed and refused by name; plain requests parse exactly
  as before (no extra fields set), answers carry `forecast(s)` only when a horizon was asked.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import orjson
import pytest

from mlserving_common import protocol
from mlserving_common.calendar import CALENDAR_FEATURES, calendar_features, features_after
from mlserving_common.package import Metadata, Normalization, PackageError, TensorSpec
from mlserving_common.protocol import ErrorCode, ProtocolError, parse_request

MONDAY = 1_700_438_400  # 2023-11-20T00:00:00Z, a Monday


def metadata(**changes) -> Metadata:
    base = Metadata(
        name="m",
        version="v1",
        created_at="2026-01-01T00:00:00Z",
        window=48,
        normalization=Normalization(0.0, 1.0),
        input=TensorSpec([-1, 48]),
        output=TensorSpec([-1, 1]),
        model_sha256="0" * 64,
    )
    return dataclasses.replace(base, **changes)


CALENDAR = {"features": list(CALENDAR_FEATURES), "interval_s": 1800.0}


def test_defaults_are_one_step_without_calendar() -> None:
    m = metadata()
    m.validate()
    raw = orjson.loads(m.to_json())
    del raw["horizon"], raw["calendar"]  # a package written before these fields existed
    old = Metadata.from_dict(raw)
    assert old.horizon == 1 and old.calendar == {} and old.input_width == 48


def test_horizon_and_calendar_shapes() -> None:
    metadata(horizon=48, output=TensorSpec([-1, 48])).validate()
    metadata(calendar=CALENDAR, input=TensorSpec([-1, 52])).validate()
    with pytest.raises(PackageError, match=r"output\.shape.*horizon=48"):
        metadata(horizon=48).validate()
    with pytest.raises(PackageError, match="horizon"):
        metadata(horizon=0).validate()
    with pytest.raises(PackageError, match="horizon"):
        Metadata.from_dict({**orjson.loads(metadata().to_json()), "horizon": True})
    with pytest.raises(PackageError, match="4 calendar features"):
        metadata(calendar=CALENDAR).validate()  # input still [-1, 48]
    with pytest.raises(PackageError, match=re.escape("calendar.features")):
        metadata(calendar={"features": ["moon_phase"], "interval_s": 60}, input=TensorSpec([-1, 49])).validate()
    with pytest.raises(PackageError, match=re.escape("calendar.features")):
        metadata(calendar={"features": ["day_sin", "day_sin"], "interval_s": 60}, input=TensorSpec([-1, 50])).validate()
    with pytest.raises(PackageError, match=re.escape("calendar.interval_s")):
        metadata(calendar={"features": ["day_sin"], "interval_s": 0}, input=TensorSpec([-1, 49])).validate()
    with pytest.raises(PackageError, match="calendar"):
        Metadata.from_dict({**orjson.loads(metadata().to_json()), "calendar": ["day_sin"]})


def test_calendar_feature_values() -> None:
    names = list(CALENDAR_FEATURES)
    got = calendar_features([MONDAY, MONDAY + 6 * 3600, MONDAY + 12 * 3600, MONDAY + 3.5 * 86400], names)
    assert got.dtype == np.float32 and got.shape == (4, 4)
    assert got[0] == pytest.approx([0.0, 1.0, 0.0, 1.0], abs=1e-6)  # midnight, start of the week
    assert got[1][:2] == pytest.approx([1.0, 0.0], abs=1e-6)  # 06:00
    assert got[2][:2] == pytest.approx([0.0, -1.0], abs=1e-6)  # noon
    assert got[3][2:] == pytest.approx([0.0, -1.0], abs=1e-6)  # half-way through the week
    # "after the last reading" = the first forecast step; a subset keeps the requested order.
    after = features_after([MONDAY - 1800], 1800, ["week_cos", "day_sin"])
    assert after[0] == pytest.approx([1.0, 0.0], abs=1e-6)


def test_plain_requests_are_unchanged() -> None:
    request = parse_request(b'{"id": "a", "series": [1, 2, 3]}', 1 << 16, 16)
    assert request.horizon is None and request.times is None
    batched = parse_request(b'{"instances": [[1, 2], [3, 4]]}', 1 << 16, 16)
    assert batched.horizon is None and batched.times is None
    body = orjson.loads(protocol.encode_prediction(request, [2.5], "t", "m", "v1"))
    assert body["prediction"] == 2.5 and "forecast" not in body and "forecasts" not in body


def test_horizon_and_times_round_trip() -> None:
    payload = protocol.encode_request([1.0, 2.0], horizon=48, time=MONDAY)
    request = parse_request(payload, 1 << 16, 16)
    assert request.horizon == 48 and request.times == (float(MONDAY),)
    payload = protocol.encode_request(instances=[[1.0], [2.0]], times=[MONDAY, MONDAY + 1800], horizon=2)
    request = parse_request(payload, 1 << 16, 16)
    assert request.batched and request.times == (float(MONDAY), float(MONDAY + 1800)) and request.horizon == 2
    body = orjson.loads(protocol.encode_prediction(request, [1.0, 2.0], "t", "m", "v1", [[1.0, 1.5], [2.0, 2.5]]))
    assert body["predictions"] == [1.0, 2.0] and body["forecasts"] == [[1.0, 1.5], [2.0, 2.5]]
    single = parse_request(protocol.encode_request([1.0], horizon=2), 1 << 16, 16)
    body = orjson.loads(protocol.encode_prediction(single, [1.0], "t", "m", "v1", [[1.0, 1.5]]))
    assert body["prediction"] == 1.0 and body["forecast"] == [1.0, 1.5]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"series": [1], "horizon": 0}, "'horizon'"),
        ({"series": [1], "horizon": True}, "'horizon'"),
        ({"series": [1], "horizon": 2.0}, "'horizon'"),
        ({"series": [1], "horizon": protocol.MAX_HORIZON + 1}, "'horizon'"),
        ({"series": [1], "time": "now"}, "'time'"),
        ({"series": [1], "time": -1}, "'time'"),
        ({"series": [1], "time": False}, "'time'"),
        ({"series": [1], "time": [MONDAY]}, "'time'"),
        ({"series": [1], "times": [MONDAY]}, "'time' goes with 'series'"),
        ({"instances": [[1], [2]], "time": MONDAY}, "'time' goes with 'series'"),
        ({"instances": [[1], [2]], "times": [MONDAY]}, "list of 2 unix times"),
        ({"instances": [[1], [2]], "times": MONDAY}, "'times'"),
        ({"instances": [[1], [2]], "times": [MONDAY, None]}, "'times'"),
    ],
)
def test_bad_horizon_or_times_are_invalid_requests(body: dict, fragment: str) -> None:
    payload = orjson.dumps({"id": "x", **body})
    with pytest.raises(ProtocolError) as caught:
        parse_request(payload, 1 << 16, 16)
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert caught.value.request_id == "x"
    assert fragment in caught.value.message
