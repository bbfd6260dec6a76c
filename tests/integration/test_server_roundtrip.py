"""Round trips through a real broker and a real server process: every tenant, every payload form."""

from __future__ import annotations

import math
import uuid

import pytest

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


@pytest.fixture
def server(server_process, registry_root):
    return server_process(registry_root)


@pytest.mark.parametrize("tenant, model", [("tenant-a", "lstm"), ("tenant-b", "ann")])
def test_round_trip_per_tenant(server, mqtt_client, tenant, model):
    client = mqtt_client(tenant)
    answer = client.request({"series": SERIES})
    assert "error" not in answer, answer
    assert answer["tenant"] == tenant
    assert answer["model"] == model
    assert answer["version"] == "v1"
    assert answer["v"] == 1
    assert isinstance(answer["prediction"], float) and math.isfinite(answer["prediction"])


def test_batched_request_answers_every_instance_in_order(server, mqtt_client):
    client = mqtt_client("tenant-a")
    instances = [[x + i for x in SERIES] for i in range(5)]
    batched = client.request({"instances": instances})
    assert "error" not in batched, batched
    assert len(batched["predictions"]) == 5
    singles = [client.request({"series": s})["prediction"] for s in instances]
    assert batched["predictions"] == pytest.approx(singles, rel=1e-5, abs=1e-5)


def test_legacy_payload_without_legacy_settings_is_refused(server, mqtt_client):
    """No `legacy` scaling configured: the client's units are unknown, so no answer could be right
    (docs/protocol.md; the conversion itself: test_server_legacy_tutorial.py)."""
    client = mqtt_client("tenant-a")
    body = {f"norm_{i + 1}": v for i, v in enumerate([-0.5, -0.2, 0.0, 0.3, 0.5, 0.8])}
    answer = client.request(body)
    assert answer["error"]["code"] == "invalid_request", answer
    assert "tenants.tenant-a.legacy" in answer["error"]["message"]


def test_response_topic_and_correlation_data_are_honoured(server, mqtt_client, broker):
    client = mqtt_client("tenant-a")
    reply_to = broker.response_topic("tenant-a") + "/client-42"
    answer_id = uuid.uuid4().hex
    client.send({"id": answer_id, "series": SERIES}, response_topic=reply_to, correlation=b"corr-1")
    assert client.wait_for([answer_id])
    got = client.answers[answer_id][0]
    assert got.topic == reply_to
    assert got.correlation == b"corr-1"
    assert "prediction" in got.body


def test_response_topic_outside_namespace_is_refused_on_default_topic(server, mqtt_client, broker):
    client = mqtt_client("tenant-a")
    request_id = uuid.uuid4().hex
    client.send(
        {"id": request_id, "series": SERIES}, response_topic=broker.response_topic("tenant-b"), correlation=b"x"
    )
    assert client.wait_for([request_id])
    got = client.answers[request_id][0]
    assert got.topic == broker.response_topic("tenant-a")
    assert got.body["error"]["code"] == "invalid_request"
    assert got.correlation == b"x"


def test_model_can_be_chosen_per_request(server_process, registry_root, mqtt_client):
    tenants = {
        "tenant-a": {"models": {"lstm": "current", "ann": "v1"}, "default_model": "lstm"},
        "tenant-b": {"models": {"ann": "current"}},
    }
    server_process(registry_root, tenants=tenants)
    client = mqtt_client("tenant-a")
    assert client.request({"series": SERIES})["model"] == "lstm"
    answer = client.request({"series": SERIES, "model": "ann"})
    assert (answer["model"], answer["version"]) == ("ann", "v1")
