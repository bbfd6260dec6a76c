"""Limits answer explicitly: rate_limited per tenant, overloaded when the queue is full. Nothing silent."""

from __future__ import annotations

import pytest

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


def test_rate_limited_tenant_gets_error_answers_and_other_tenant_is_unaffected(server_process, registry_root, mqtt_client):
    tenants = {
        "tenant-a": {"models": {"lstm": "current"}, "rate_limit": {"per_second": 1, "burst": 5}},
        "tenant-b": {"models": {"ann": "current"}},
    }
    server = server_process(registry_root, tenants=tenants)
    a, b = mqtt_client("tenant-a"), mqtt_client("tenant-b")
    ids = [f"a-{i}" for i in range(40)]
    for request_id in ids:
        a.send({"id": request_id, "series": SERIES})
    b_ids = [f"b-{i}" for i in range(40)]
    for request_id in b_ids:
        b.send({"id": request_id, "series": SERIES})
    assert a.wait_for(ids) and b.wait_for(b_ids)
    assert all(len(a.answers[i]) == 1 for i in ids)
    codes = [a.answers[i][0].body.get("error", {}).get("code", "ok") for i in ids]
    assert set(codes) == {"ok", "rate_limited"}
    assert 5 <= codes.count("ok") <= 10  # the burst, plus what refilled meanwhile
    assert all("prediction" in b.answers[i][0].body for i in b_ids)
    assert server.metric("mlserving_requests_total", tenant="tenant-a", outcome="rate_limited") == codes.count("rate_limited")


def test_full_queue_answers_overloaded_instead_of_dropping(server_process, registry_root, mqtt_client):
    # A tiny queue and a worker that waits long for companions: most of a burst cannot be queued.
    server = server_process(
        registry_root, limits={"max_pending": 2}, batching={"max_batch": 64, "max_wait_ms": 300}
    )
    client = mqtt_client("tenant-a")
    ids = [f"burst-{i}" for i in range(300)]
    for request_id in ids:
        client.send({"id": request_id, "series": SERIES})
    assert client.wait_for(ids, timeout=30)
    assert all(len(client.answers[i]) == 1 for i in ids)
    codes = [client.answers[i][0].body.get("error", {}).get("code", "ok") for i in ids]
    assert codes.count("overloaded") > 0 and codes.count("ok") > 0
    assert set(codes) == {"ok", "overloaded"}
    assert server.metric("mlserving_requests_total", outcome="overloaded") == codes.count("overloaded")


@pytest.mark.slow
def test_flood_is_answered_or_explicitly_rejected_never_dropped(server_process, registry_root, mqtt_client, load):
    """20,000 requests at once into a server whose queue holds 1,000: every one gets one answer."""
    server = server_process(registry_root, limits={"max_pending": 1000})
    client = mqtt_client("tenant-a")
    result = load(client, 20_000, SERIES, timeout=180)
    assert result["lost"] == 0
    assert result["duplicates"] == 0
    assert {e["error"]["code"] for e in result["errors"]} <= {"overloaded"}
    ok = server.metric("mlserving_requests_total", tenant="tenant-a", outcome="ok")
    assert ok + len(result["errors"]) == 20_000
