"""Faults under load: the broker restarts; servers reconnect and, with client retries, nothing is lost."""

from __future__ import annotations

import threading

import pytest

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


@pytest.mark.slow
def test_broker_restart_under_load_servers_reconnect_and_retries_lose_nothing(
    broker, server_process, registry_root, mqtt_client, load, until
):
    servers = [server_process(registry_root, name=f"s{i}") for i in (1, 2)]
    client = mqtt_client("tenant-a")
    restarted = threading.Event()

    def progress(i: int) -> None:
        if i == 1000 and not restarted.is_set():
            restarted.set()
            threading.Thread(target=broker.restart, kwargs={"down_seconds": 1.0}, daemon=True).start()

    result = load(client, 3000, SERIES, rate=500, retry_after=3.0, timeout=90, on_progress=progress)
    assert result["lost"] == 0, result["lost"]
    assert [e for e in result["errors"] if e["error"]["code"] not in ("overloaded",)] == []
    for server in servers:
        until(server.is_ready, timeout=30)
        assert server.proc.poll() is None
        assert server.metric("mlserving_broker_connects_total") >= 2
    # and serving goes on normally afterwards
    assert "prediction" in client.request({"series": SERIES})


def test_server_starts_while_broker_is_down_and_connects_when_it_comes(
    broker, server_process, registry_root, mqtt_client, until
):
    broker.local.stop()
    server = server_process(registry_root, wait=False)
    until(lambda: server.status("/healthz") == 200, timeout=30)
    status, body = server.get("/readyz")
    assert status == 503 and '"connected":false' in body
    broker.local.start()
    server.wait_ready(timeout=30)
    assert "prediction" in mqtt_client("tenant-a").request({"series": SERIES})
