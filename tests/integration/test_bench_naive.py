"""The bench's naive baselines answer like our server, on both MQTT layers, through a real Mosquitto.

naive.py runs on paho-mqtt (the tutorial's program, the "ours / naive >= 3x" baseline) and on
mlserving_common.mqtt: each must answer every request of a closed loop that keeps more requests
outstanding than the broker's window with a prediction (an error answer counts against it), and
exit cleanly on SIGTERM. Nothing here is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlserving_bench import models, naive
from mlserving_bench.stack import NAIVE_TENANT, Stack

from mqtt_support import assert_answers_every_request_and_stops


@pytest.fixture
def stack(model_registry: Any, tmp_path: Path) -> Any:
    window = models.package_window(model_registry.root, "lstm")
    with Stack(tmp_path, model_registry.root, window=window) as running:
        yield running


@pytest.mark.parametrize("layer", naive.MQTT_LAYERS)
def test_naive_answers_every_request_with_a_prediction_and_stops_cleanly(stack: Stack, layer: str) -> None:
    package = models.package_dir(stack.registry, "lstm")
    child = stack.start_responder(
        f"naive-{layer}", "mlserving_bench.naive", NAIVE_TENANT, "--package", str(package), "--mqtt", layer
    )
    assert_answers_every_request_and_stops(stack, child, NAIVE_TENANT)
