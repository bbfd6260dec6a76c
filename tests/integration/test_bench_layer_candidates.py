"""Every candidate of the bench's MQTT layer comparison is a correct QoS 1 echo through a real Mosquitto.

The bench's own stack (our broker plugin, passwords, ACLs, Receive Maximum 100 from the broker):
each responder must answer every request of a closed loop that keeps more requests outstanding
than the broker's window (so answers back up and flow control is exercised), echo the payload with
its Correlation Data to its Response Topic, and exit cleanly on SIGTERM. Nothing here is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlserving_bench import mqtt_layers
from mlserving_bench.stack import Stack

from mqtt_support import assert_answers_every_request_and_stops


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    # The registry is only read by our server, which these tests do not start.
    with Stack(tmp_path, tmp_path / "no-registry", window=6, extra_tenants=mqtt_layers.TENANTS) as running:
        yield running


@pytest.mark.parametrize("layer", list(mqtt_layers.LAYERS))
def test_candidate_answers_every_request_and_stops_cleanly(stack: Stack, layer: str) -> None:
    child = mqtt_layers.start(stack, layer)
    assert_answers_every_request_and_stops(stack, child, mqtt_layers.tenant(layer))


def test_comparison_measures_every_candidate(stack: Stack) -> None:
    errors: dict[str, str] = {}
    plan = mqtt_layers.ComparisonPlan(
        rounds=1, saturation_seconds=0.5, rate=200.0, rate_seconds=0.5, warm_up_seconds=0.2
    )

    def load(_label: str, **kwargs: Any) -> Any:
        kwargs.setdefault("grace", 20.0)
        return stack.load(**kwargs)

    section = mqtt_layers.compare(stack, plan, load, lambda _line: None, errors)
    assert errors == {}
    for name, entry in section["candidates"].items():
        (saturation,) = entry["rounds"]
        assert saturation["answered"] > 0 and saturation["lost"] == 0, name
        assert entry["at_rate"]["answered"] > 0 and entry["at_rate"]["lost"] == 0, name
        assert entry["rss_mb"] > 0, name
    assert stack.children == []  # every candidate was stopped again
