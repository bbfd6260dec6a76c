"""Every malformed request gets exactly one error answer, and valid requests keep being served."""

from __future__ import annotations

import uuid

import orjson
import pytest

from mlserving_common.mosquitto import SERVER_MAX_PAYLOAD

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]

# (name, raw payload, expected error code); ids are embedded where the payload is JSON.
CASES = [
    ("not_json", b"this is not json", "bad_json"),
    ("empty_payload", b"", "bad_json"),
    ("json_array", b"[1, 2, 3]", "invalid_request"),
    ("series_is_string", {"series": "1,2,3,4,5,6"}, "invalid_request"),
    ("series_has_string", {"series": [1, 2, "three", 4, 5, 6]}, "invalid_request"),
    ("series_has_bool", {"series": [1, 2, True, 4, 5, 6]}, "invalid_request"),
    ("series_empty", {"series": []}, "invalid_request"),
    ("nan", b'{"id": "%s", "series": [1, 2, NaN, 4, 5, 6]}', "bad_json"),
    ("infinity", b'{"id": "%s", "series": [1, 2, Infinity, 4, 5, 6]}', "bad_json"),
    ("huge_number", b'{"id": "%s", "series": [1, 2, 1e999, 4, 5, 6]}', "bad_json"),
    ("short_window", {"series": SERIES[:3]}, "wrong_window"),
    ("long_window", {"series": SERIES + SERIES}, "wrong_window"),
    ("batched_wrong_window", {"instances": [SERIES, SERIES[:5]]}, "wrong_window"),
    ("instances_not_list", {"instances": {"a": 1}}, "invalid_request"),
    ("series_and_instances", {"series": SERIES, "instances": [SERIES]}, "invalid_request"),
    ("no_series", {"values": SERIES}, "invalid_request"),
    ("unknown_model", {"series": SERIES, "model": "gpt"}, "unknown_model"),
    ("bad_model_type", {"series": SERIES, "model": 7}, "invalid_request"),
    ("unsupported_version", {"series": SERIES, "v": 2}, "unsupported_version"),
    # Over the server's limit but under the broker's message_size_limit, so the server answers it
    # (bigger packets are refused by the broker itself: test_server_limits.py, test_broker_memory.py).
    ("over_server_limit", None, "payload_too_large"),
    ("too_many_instances", {"instances": [SERIES] * 1025}, "payload_too_large"),
]


def _payload(case: str, raw, request_id: str) -> bytes:
    if case == "over_server_limit":
        size = SERVER_MAX_PAYLOAD + 1024
        return orjson.dumps({"id": request_id, "series": [1.0] * size})[:size].ljust(size, b" ")
    if isinstance(raw, bytes):
        return raw % request_id.encode() if b"%s" in raw else raw
    return orjson.dumps({"id": request_id, **raw})


@pytest.fixture
def served(server_process, registry_root, mqtt_client):
    server = server_process(registry_root)
    return server, mqtt_client("tenant-a")


def test_each_malformed_request_gets_one_error_answer_and_serving_continues(served):
    """One server for all cases (a server per case would cost seconds each)."""
    server, client = served
    problems = []
    for case, raw, code in CASES:
        request_id = f"{case}-{uuid.uuid4().hex[:8]}"
        before = len(client.all_answers)
        client.publish_raw(_payload(case, raw, request_id))
        if not client.wait_answers(before + 1, timeout=20):
            problems.append(f"{case}: no answer")
            continue
        answer = client.all_answers[before].body
        if answer.get("error", {}).get("code") != code or answer.get("tenant") != "tenant-a":
            problems.append(f"{case}: expected {code}, got {answer}")
        if answer.get("id") not in (None, request_id):  # unparseable payloads are answered with id null
            problems.append(f"{case}: answer carries id {answer.get('id')!r}")
        ok = client.request({"series": SERIES})
        if "prediction" not in ok:
            problems.append(f"{case}: valid request after it failed: {ok}")
        if len(client.all_answers) != before + 2:
            problems.append(f"{case}: {len(client.all_answers) - before - 1} answers instead of 1")
    assert not problems, "\n".join(problems)
    assert server.proc.poll() is None


def test_burst_of_mixed_requests_answers_each_once(served):
    server, client = served
    ids = []
    for i, (case, raw, code) in enumerate(CASES * 3):
        if code == "bad_json" or case == "over_server_limit" or isinstance(raw, bytes):
            continue  # their id cannot be recovered; covered one at a time above
        request_id = f"mixed-{i}"
        ids.append(request_id)
        client.publish_raw(_payload(case, raw, request_id))
        valid_id = f"valid-{i}"
        ids.append(valid_id)
        client.send({"id": valid_id, "series": SERIES})
    assert client.wait_for(ids, timeout=30)
    assert all(len(client.answers[i]) == 1 for i in ids)
    assert all("prediction" in client.answers[i][0].body for i in ids if i.startswith("valid-"))
    assert all("error" in client.answers[i][0].body for i in ids if i.startswith("mixed-"))
    assert server.proc.poll() is None
