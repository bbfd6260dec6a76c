"""The server with the project's client library, and with the tutorial's fixed queue names."""

from __future__ import annotations

import math

import pytest

from mlserving_client.client import Client, PredictionError

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


def test_client_library_round_trips(server_process, registry_root, broker):
    server_process(registry_root)
    with Client(broker.host, broker.port, *broker.credentials("tenant-a"), tenant="tenant-a") as client:
        single = client.predict(SERIES, timeout=10)
        assert (single.model, single.version, single.tenant) == ("lstm", "v1", "tenant-a")
        assert math.isfinite(single.value)
        batch = client.predict_batch([SERIES, [x + 1 for x in SERIES]], timeout=10)
        assert len(batch) == 2
        with pytest.raises(PredictionError) as error:
            client.predict(SERIES[:4], timeout=10)
        assert error.value.code == "wrong_window"


def test_tutorial_queue_names_and_legacy_payload(server_process, registry_root, mqtt_client):
    tenants = {
        "legacy": {
            "models": {"lstm": "current"},
            "request_topic": "inqueue/lstm",
            "response_topic": "outqueue/lstm",
            "legacy": {"mean": 21.0, "scale": 5.0},
        },
    }
    server_process(registry_root, tenants=tenants)
    client = mqtt_client("legacy")
    assert (client.request_topic, client.response_topic) == ("inqueue/lstm", "outqueue/lstm")
    legacy = client.request({f"norm_{i + 1}": v for i, v in enumerate([-0.5, -0.2, 0.0, 0.3, 0.5, 0.8])})
    assert legacy["normalized"] is True and legacy["tenant"] == "legacy"
    assert math.isfinite(legacy["prediction"])  # its value: test_server_legacy_tutorial.py
    assert client.all_answers[-1].topic == "outqueue/lstm"
    assert "prediction" in client.request({"series": SERIES})
