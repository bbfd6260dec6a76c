"""The tutorial's own client against a real server and a real model (issue 13, finding 6).

The tutorial's rows carry `norm_1..norm_6`, where norm_1 is the NEWEST reading (lag 1) and every
value is `(reading - mean) / scale` with the tutorial's OWN constants. The server used to read
them oldest first and feed them to our model unconverted: answers up to 0.755 normalised units
off. Here the expected forecast is computed offline from the package with LiteRT, in readings,
and the served answer (in the client's units) must equal it once scaled back.

The client is a plain MQTT v5 connection that puts on the wire what the paho lines docs/client.md
tells a tutorial user to add set: MQTT v5, username/password, and a client id `<username>:<something>`.
"""

from __future__ import annotations

import queue
import uuid

import numpy as np
import orjson
import pytest
from ai_edge_litert.interpreter import Interpreter

from mlserving_common.package import MODEL_FILE, read_metadata

from mqtt_support import connect_as

RISING = [14.0, 16.5, 19.0, 22.5, 26.0, 29.5]  # oldest first; not symmetric: order matters
PALINDROME = [24.0, 17.0, 28.0, 28.0, 17.0, 24.0]  # the same read either way: only scaling matters


def litert_forecast(package, window: list[float]) -> float:
    """The model's forecast for one window of readings, computed without the server's code."""
    metadata = read_metadata(package)
    mean, std = metadata.normalization.mean, metadata.normalization.std
    interpreter = Interpreter(model_path=str(package / MODEL_FILE))
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1, *metadata.input.shape[1:]])
    interpreter.allocate_tensors()
    x = ((np.asarray(window, dtype=np.float64) - mean) / std).astype(np.float32)
    interpreter.set_tensor(detail["index"], x.reshape(1, *metadata.input.shape[1:]))
    interpreter.invoke()
    z = float(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).reshape(-1)[0])
    return z * std + mean


def tutorial_row(readings: list[float], mean: float, scale: float) -> dict[str, float]:
    """One row as the tutorial builds it: norm_k = reading k steps back, in its own units."""
    return {f"norm_{k}": (readings[-k] - mean) / scale for k in range(1, len(readings) + 1)}


class TutorialClient:
    """The tutorial's client, plus what the lines docs/client.md shows it must add put on the wire."""

    def __init__(self, broker, username: str = "legacy") -> None:
        self.answers: queue.Queue[dict] = queue.Queue()
        password = broker.credentials(username)[1]
        # --- what the lines docs/client.md shows set: MQTT v5, the login, an owned client id ---
        self.client = connect_as(
            broker,
            username,
            f"{username}:{uuid.uuid4().hex}",
            password=password,
            on_message=lambda message: self.answers.put(orjson.loads(message.payload)),
        )
        # --------------------------------------------------------------------------------------
        assert self.client.subscribe("outqueue/lstm", qos=1) == [1]

    def ask(self, row: dict[str, float]) -> dict:
        """Publish one row to inqueue/lstm and wait for the answer on outqueue/lstm."""
        self.client.connection.publish("inqueue/lstm", orjson.dumps(row), qos=1)
        return self.answers.get(timeout=20)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def lstm(model_registry):
    return model_registry.packages["lstm"], read_metadata(model_registry.packages["lstm"]).normalization


@pytest.fixture
def served(server_process, registry_root, lstm):
    """One server: `legacy` with the tutorial's own constants (unlike the package's), `tenant-a`
    with constants equal to the package's (so only the order can be wrong), `tenant-b` without any."""
    _, norm = lstm
    tutorial = {"mean": norm.mean + 3.25, "scale": norm.std * 1.7}
    tenants = {
        "legacy": {
            "models": {"lstm": "current"},
            "request_topic": "inqueue/lstm",
            "response_topic": "outqueue/lstm",
            "legacy": tutorial,
        },
        "tenant-a": {"models": {"lstm": "current"}, "legacy": {"mean": norm.mean, "scale": norm.std}},
        "tenant-b": {"models": {"lstm": "current"}},
    }
    server_process(registry_root, tenants=tenants)
    return tutorial


def test_tutorial_rows_get_the_models_forecast_in_the_clients_units(served, broker, lstm):
    package, _ = lstm
    mean, scale = served["mean"], served["scale"]
    client = TutorialClient(broker)
    try:
        for readings in (RISING, PALINDROME, [r + 4.0 for r in reversed(RISING)]):
            answer = client.ask(tutorial_row(readings, mean, scale))
            assert "error" not in answer, answer
            assert answer["normalized"] is True and answer["tenant"] == "legacy" and answer["model"] == "lstm"
            expected = litert_forecast(package, readings)
            assert answer["prediction"] * scale + mean == pytest.approx(expected, rel=1e-4, abs=1e-4), readings
    finally:
        client.close()


def test_order_alone_newest_first(served, mqtt_client, lstm):
    """tenant-a's constants equal the package's: the old code's scaling was right, its order wrong."""
    package, norm = lstm
    right, reversed_ = litert_forecast(package, RISING), litert_forecast(package, RISING[::-1])
    assert abs(right - reversed_) > 0.1, "the window must tell the two orders apart"
    answer = mqtt_client("tenant-a").request(tutorial_row(RISING, norm.mean, norm.std))
    served_raw = answer["prediction"] * norm.std + norm.mean
    assert served_raw == pytest.approx(right, rel=1e-4, abs=1e-4)
    assert abs(served_raw - reversed_) > 0.1


def test_scale_alone_client_constants(served, broker, lstm):
    """A palindrome reads the same either way: only the conversion of units can be wrong."""
    package, norm = lstm
    mean, scale = served["mean"], served["scale"]
    row = tutorial_row(PALINDROME, mean, scale)
    expected = litert_forecast(package, PALINDROME)
    # What the old code answered: the client's values taken as the package's z-scores, answered as such.
    unconverted = litert_forecast(package, [row[f"norm_{k}"] * norm.std + norm.mean for k in range(6, 0, -1)])
    old_raw = (unconverted - norm.mean) / norm.std * scale + mean
    assert abs(old_raw - expected) > 0.1, "the constants must tell converted and unconverted apart"
    client = TutorialClient(broker)
    try:
        answer = client.ask(row)
    finally:
        client.close()
    assert answer["prediction"] * scale + mean == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_without_legacy_settings_the_row_is_refused_by_name(served, mqtt_client):
    client = mqtt_client("tenant-b")
    answer = client.request({"id": "row-1", **tutorial_row(RISING, 20.0, 5.0)})
    assert answer["error"]["code"] == "invalid_request" and answer["id"] == "row-1"
    assert "tenants.tenant-b.legacy" in answer["error"]["message"]
    assert "prediction" in client.request({"series": RISING})  # the tenant's own series still served
