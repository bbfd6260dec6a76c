"""The tutorial's legacy payload: from the client's units to readings and back.

The tutorial's client sends `norm_1..norm_6`, each `(reading - mean) / scale` with the constants
of ITS OWN training file, and reads the answer in the same units. `protocol.parse_request` has
already put the window oldest first (norm_1 is the newest reading); here the tenant's `legacy`
settings turn it into readings, so the model's own normalisation applies as for any `series`,
and turn the forecast (in readings) back into the client's units. Without `legacy` settings the
scaling is unknown and any answer would be wrong, so such requests are refused by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mlserving_common import protocol
from mlserving_common.protocol import ErrorCode, ProtocolError, Request
from mlserving_server.config import LegacyConfig


def to_readings(request: Request, legacy: LegacyConfig | None, tenant: str) -> Request:
    """The request with its legacy window as readings; ProtocolError if the tenant declares no
    scaling or a converted reading does not fit float32."""
    if legacy is None:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"tenant {tenant} has no legacy scaling: norm_1..norm_6 are refused until the operator sets "
            f"tenants.{tenant}.legacy {{mean, scale}} (the client's constants); or send 'series' readings",
            request.id,
        )
    instances = tuple(tuple(value * legacy.scale + legacy.mean for value in row) for row in request.instances)
    if not all(protocol.numbers_fit_float32(row) for row in instances):
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"norm_1..norm_6 as readings (value * {legacy.scale:g} + {legacy.mean:g})"
            " are outside float32's finite range",
            request.id,
        )
    return dataclasses.replace(request, instances=instances)


def to_client_units(forecasts: list[Any], legacy: LegacyConfig) -> list[Any]:
    """Forecasts in readings (floats, or lists of floats for multi-output models) -> client units."""
    mean, scale = legacy.mean, legacy.scale
    return [
        [(value - mean) / scale for value in item] if isinstance(item, list) else (item - mean) / scale
        for item in forecasts
    ]
