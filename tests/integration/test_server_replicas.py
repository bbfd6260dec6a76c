"""Two replicas on one shared subscription; a replica stopped with SIGTERM under load."""

from __future__ import annotations

import signal
import threading

import pytest

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


@pytest.mark.slow
def test_two_servers_share_the_load_and_answer_each_request_once(server_process, registry_root, mqtt_client, load):
    first = server_process(registry_root, name="first")
    second = server_process(registry_root, name="second")
    client = mqtt_client("tenant-a")
    result = load(client, 5000, SERIES, timeout=120)
    assert result["lost"] == 0
    assert result["errors"] == []
    assert result["duplicates"] == 0
    served = [s.metric("mlserving_requests_total", tenant="tenant-a", outcome="ok") for s in (first, second)]
    assert sum(served) == 5000
    assert all(count > 0 for count in served), served


@pytest.mark.slow
def test_sigterm_one_of_two_servers_under_load_loses_nothing(server_process, registry_root, mqtt_client, load):
    staying = server_process(registry_root, name="staying")
    leaving = server_process(registry_root, name="leaving")
    client = mqtt_client("tenant-a")
    stopped = threading.Event()

    def progress(i: int) -> None:
        if i == 1500 and not stopped.is_set():
            stopped.set()
            leaving.signal(signal.SIGTERM)

    result = load(client, 5000, SERIES, rate=1000, timeout=60, on_progress=progress)
    assert leaving.wait(30) == 0
    assert result["lost"] == 0, f"lost {result['lost']}; leaving log:\n{leaving.log_tail()}"
    assert result["errors"] == []
    assert result["duplicates"] == 0
    assert "server stopped" in leaving.log()
    assert staying.metric("mlserving_requests_total", tenant="tenant-a", outcome="ok") > 0
