"""The tutorial's legacy payload, parsed and converted: norm_1 is the newest reading, and the values
are in the client's own units `(reading - mean) / scale` (the tenant's `legacy` settings)."""

from __future__ import annotations

import orjson
import pytest

from mlserving_common import protocol
from mlserving_common.protocol import ErrorCode, ProtocolError
from mlserving_server import legacy
from mlserving_server.config import LegacyConfig, parse_config

READINGS = [20.0, 21.5, 23.0, 22.0, 19.0, 18.5]  # oldest first
SCALING = LegacyConfig(mean=25.0, scale=4.0)


def tutorial_row(readings: list[float], scaling: LegacyConfig) -> dict[str, float]:
    """The tutorial's row layout: norm_k is the reading k steps back, scaled by the client."""
    return {f"norm_{k}": (readings[-k] - scaling.mean) / scaling.scale for k in range(1, len(readings) + 1)}


def test_legacy_keys_become_the_readings_oldest_first() -> None:
    request = protocol.parse_request(orjson.dumps(tutorial_row(READINGS, SCALING)), 4096, 8)
    assert request.normalized is True
    converted = legacy.to_readings(request, SCALING, "legacy")
    assert converted.instances == (pytest.approx(tuple(READINGS), abs=1e-12),)
    assert converted.id == request.id and converted.normalized is True


def test_answers_go_back_into_the_client_units() -> None:
    assert legacy.to_client_units([29.0, [21.0, 33.0]], SCALING) == [1.0, [-1.0, 2.0]]


def test_without_legacy_settings_the_request_is_refused_by_name() -> None:
    request = protocol.parse_request(orjson.dumps({"id": "t1", **tutorial_row(READINGS, SCALING)}), 4096, 8)
    with pytest.raises(ProtocolError) as caught:
        legacy.to_readings(request, None, "legacy")
    assert caught.value.code == ErrorCode.INVALID_REQUEST and caught.value.request_id == "t1"
    assert "tenants.legacy.legacy" in caught.value.message


def test_readings_beyond_float32_after_conversion_are_refused() -> None:
    request = protocol.parse_request(orjson.dumps({**tutorial_row(READINGS, SCALING), "norm_2": 3e38}), 4096, 8)
    with pytest.raises(ProtocolError) as caught:
        legacy.to_readings(request, SCALING, "legacy")
    assert caught.value.code == ErrorCode.INVALID_REQUEST and "float32" in caught.value.message


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"mean": 1.0}, "tenants.t.legacy.scale: required"),
        ({"mean": 1.0, "scale": 0}, "tenants.t.legacy.scale:"),
        ({"mean": 1.0, "scale": -2.0}, "tenants.t.legacy.scale:"),
        ({"mean": True, "scale": 1.0}, "tenants.t.legacy.mean:"),
        ({"mean": 1.0, "scale": 1.0, "offset": 2}, "tenants.t.legacy.offset: unknown field"),
        ([1.0, 2.0], "tenants.t.legacy: must be a mapping"),
    ],
)
def test_legacy_settings_are_validated(settings, message) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_config({"tenants": {"t": {"models": {"lstm": "current"}, "legacy": settings}}})
    config = parse_config({"tenants": {"t": {"models": {"lstm": "current"}, "legacy": {"mean": 3, "scale": 2}}}})
    assert config.tenants["t"].legacy == LegacyConfig(mean=3.0, scale=2.0)
