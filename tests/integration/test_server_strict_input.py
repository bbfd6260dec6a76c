"""A hostile tenant with valid credentials against a real server: bounded metrics, strict numbers,
JSON-only logs (issue 13, findings 4 and 5).

- Unknown model names are the client's words: 20,000 of them must not add 20,000 label values
  to /metrics (8.9 MB before the fix), yet each request still gets its `unknown_model` answer.
- Readings beyond float32's finite range became inf in the model and were answered as a
  successful forecast, `"v": true` passed as version 1, and numpy's RuntimeWarnings reached the
  log as plain-text lines. Now each is `invalid_request` naming the field, and every line the
  server writes parses as JSON while poison values are served.
"""

from __future__ import annotations

import math
import uuid

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]
UNKNOWN_NAMES = 20_000
CHUNK = 2_000  # well under limits.max_pending: the flood is answered, never shed as overloaded


def label_sets(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) pair of a scrape, values left out."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def send_unknown(client, names: list[str]) -> None:
    for name in names:
        client.send({"id": f"m-{name}", "series": SERIES, "model": name})
    assert client.wait_for([f"m-{name}" for name in names], timeout=180), "unknown-model requests went unanswered"


def test_unknown_model_names_do_not_grow_the_metrics(server_process, registry_root, mqtt_client):
    server = server_process(registry_root)
    client = mqtt_client("tenant-a")
    assert "prediction" in client.request({"series": SERIES})  # the known model's children exist
    names = [f"spam-{i:05d}-{uuid.uuid4().hex[:8]}" for i in range(UNKNOWN_NAMES)]
    send_unknown(client, names[:CHUNK])
    first = server.metrics()
    for start in range(CHUNK, UNKNOWN_NAMES, CHUNK):
        send_unknown(client, names[start : start + CHUNK])
    last = server.metrics()

    # Every request was answered once, with its own model named in the message.
    for name in names:
        answers = client.answers[f"m-{name}"]
        assert len(answers) == 1 and answers[0].body["error"]["code"] == "unknown_model", answers
        assert name in answers[0].body["error"]["message"]
    # 18,000 more names later: the same label sets, about the same size (only counters' digits grow).
    assert label_sets(last) == label_sets(first)
    assert len(last) <= len(first) + 1024, (len(first), len(last))
    assert (
        server.metric("mlserving_requests_total", tenant="tenant-a", model="_unknown", outcome="unknown_model")
        == UNKNOWN_NAMES
    )
    models = {
        labels.get("model") for name, labels_t in label_sets(last) for labels in [dict(labels_t)] if "model" in labels
    }
    assert models <= {"lstm", "ann", "_unknown", ""}, models
    assert not any(name in last for name in names[:50])


FLOAT32_MAX = 3.4028234663852886e38
# (case, body, field named in the error message)
POISON = [
    ("above_float32", {"series": [*SERIES[:5], 3.5e39]}, "series[5]"),
    ("below_float32", {"series": [-3.5e39, *SERIES[1:]]}, "series[0]"),
    ("double_max", {"series": [*SERIES[:2], 1.7976931348623157e308, *SERIES[3:]]}, "series[2]"),
    ("batched_above_float32", {"instances": [SERIES] * 40 + [[3.5e39] * 6]}, "instances[40][0]"),
    ("version_true", {"series": SERIES, "v": True}, "'v'"),
    ("version_float", {"series": SERIES, "v": 1.0}, "'v'"),
    ("value_true", {"series": [*SERIES[:3], True, *SERIES[4:]]}, "series[3]"),
]


@pytest.mark.parametrize("tenant", ["tenant-a", "tenant-b"])
def test_poison_numbers_are_invalid_and_every_log_line_is_json(server_process, registry_root, mqtt_client, tenant):
    server = server_process(registry_root)
    client = mqtt_client(tenant)
    baseline = client.request({"series": SERIES})["prediction"]
    sent: dict[str, str] = {}
    for round_ in range(3):  # poison interleaved with valid requests, sharing batches
        for case, body, field in POISON:
            request_id = f"{case}-{round_}"
            client.send({"id": request_id, **body})
            sent[request_id] = field
            client.send({"id": f"ok-{request_id}", "series": SERIES})
    # Within float32 but extreme: may overflow inside the server's arithmetic; must be answered, never logged raw.
    extremes = {f"extreme-{i}": [FLOAT32_MAX if i % 2 else -FLOAT32_MAX] * 6 for i in range(4)}
    extremes["extreme-mixed"] = [FLOAT32_MAX, -FLOAT32_MAX] * 3
    for request_id, series in extremes.items():
        client.send({"id": request_id, "series": series})
    ids = [*sent, *(f"ok-{i}" for i in sent), *extremes]
    assert client.wait_for(ids, timeout=60)

    for request_id, field in sent.items():
        body = client.answers[request_id][0].body
        assert "prediction" not in body and body["error"]["code"] == "invalid_request", (request_id, body)
        assert field in body["error"]["message"], (request_id, body)
        ok = client.answers[f"ok-{request_id}"][0].body
        assert ok["prediction"] == pytest.approx(baseline, rel=1e-5, abs=1e-5), ok
    for request_id in extremes:
        body = client.answers[request_id][0].body
        assert "error" in body or math.isfinite(body["prediction"]), body  # never inf/NaN as a success

    assert server.stop() == 0
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"non-JSON line in the server's output: {line!r}")
        assert isinstance(record, dict) and "level" in record and "event" in record, line
