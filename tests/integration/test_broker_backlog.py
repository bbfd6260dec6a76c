"""The broker refuses a tenant's requests once its backlog of unanswered ones is full (issue 13).

Mosquitto drops silently what overflows a session's queue (`max_queued_messages`), and the
publisher has its PUBACK already. Our plugin counts, per tenant, requests accepted minus answers
the servers published to the tenant's response topics, and refuses a request over
`tenant_backlog` with PUBACK 0x87: the client learns at once, and the backlog in front of the
servers stays within their session queues. Small backlogs here keep the tests short; the
defaults (mlserving_common.mosquitto, the chart) are 16,000 of a 20,000-message queue.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from mlserving_common import protocol

SERIES = [310.0, 305.0, 298.0, 301.0, 312.0, 320.0]
TENANT_A_ONLY = {"tenant-a": {"models": {"lstm": "current"}}}
TENANT_B_ONLY = {"tenant-b": {"models": {"ann": "current"}}}


def publish_all(client, count: int) -> list[int]:
    """PUBACK reason codes of `count` QoS 1 requests."""
    mids = [client.publish_raw(protocol.encode_request(SERIES, request_id=f"r{i}")) for i in range(count)]
    return [client.publish_result(mid, timeout=20) for mid in mids]


@pytest.mark.broker_plugin_options(tenant_backlog=200)
def test_a_full_backlog_is_refused_at_the_broker_and_other_tenants_keep_theirs(
    broker, server_process, registry_root, mqtt_client
):
    server_a = server_process(registry_root, tenants=TENANT_A_ONLY, name="server-a")
    server_process(registry_root, tenants=TENANT_B_ONLY, name="server-b")
    a, b = mqtt_client("tenant-a"), mqtt_client("tenant-b")
    os.kill(server_a.proc.pid, signal.SIGSTOP)  # a stalled server: tenant-a's backlog builds up
    try:
        codes = publish_all(a, 500)
        b_codes = publish_all(b, 50)
        assert b.wait_answers(50, timeout=30), len(b.all_answers)
    finally:
        os.kill(server_a.proc.pid, signal.SIGCONT)
    accepted, refused = codes.count(0), codes.count(0x87)
    print(
        f"\nbacklog 200: tenant-a accepted {accepted}, refused {refused} of 500; tenant-b accepted "
        f"{b_codes.count(0)} of 50, answered {len(b.all_answers)}"
    )
    assert (accepted, refused) == (200, 300), codes
    assert b_codes == [0] * 50
    assert a.wait_answers(200, timeout=60), len(a.all_answers)
    time.sleep(1.0)
    assert len(a.all_answers) == 200  # exactly the accepted ones, nothing dropped or doubled
    assert publish_all(a, 100) == [0] * 100  # answers freed the backlog
    assert a.wait_answers(300, timeout=60)
    log = broker.local.log_path.read_text(errors="replace")
    assert 'user="tenant-a"' in log and "reason=backlog_full" in log


@pytest.mark.broker_plugin_options(tenant_backlog=50)
def test_a_backlog_nobody_will_answer_is_forgotten(broker, server_process, registry_root, mqtt_client):
    """Requests published while no server listens are never answered: after 30 s without an
    answer the backlog is forgotten, so a tenant is not locked out by a crash."""
    a = mqtt_client("tenant-a")
    codes = publish_all(a, 60)  # no server yet: Mosquitto answers 0x10 (no matching subscribers)
    assert codes.count(0x87) == 10 and codes.count(0x87) + codes.count(0x10) == 60, codes
    server_process(registry_root, tenants=TENANT_A_ONLY, name="server-a")
    assert publish_all(a, 1) == [0x87]  # still full: those 50 will never be answered
    time.sleep(31)
    assert publish_all(a, 1) == [0]
    assert a.wait_answers(1, timeout=30)
    assert "forgotten" in broker.local.log_path.read_text(errors="replace")
