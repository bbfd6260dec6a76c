"""The chart's figures the server is held to, read from charts/ml-serving/values.yaml (one place).

The bench's flood lines and tests/integration/test_server_overload.py compare the server's peak
RSS with the tenant container's memory limit (`tenantDefaults.resources.limits.memory`) and run
the server with the chart's `server.config.limits`, so a change to the chart changes the bar.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "ml-serving" / "values.yaml"
#: Peak RSS allowed under a flood, as a share of the container limit (issue 13).
PEAK_SHARE = 0.6
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _values(path: Path = CHART_VALUES) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def quantity_bytes(text: str | int) -> int:
    """A Kubernetes memory quantity ("512Mi", "1G", 1048576) in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|K|M|G|)\s*", str(text))
    if match is None:
        raise ValueError(f"unsupported memory quantity {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def server_memory_limit_mib(path: Path = CHART_VALUES) -> float:
    """The chart's memory limit of a tenant's server container, in MiB."""
    limit = _values(path)["tenantDefaults"]["resources"]["limits"]["memory"]
    return quantity_bytes(limit) / 1024**2


def server_limits(path: Path = CHART_VALUES) -> dict[str, int]:
    """`server.config.limits` in the server's own (snake_case) config keys, as the chart renders them."""
    raw = _values(path)["server"]["config"]["limits"]
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): int(value) for key, value in raw.items()}
