"""Per-tenant ACLs on the broker: tenant A cannot read or write tenant B's topics."""

from __future__ import annotations

import time
import uuid

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]
NOT_AUTHORIZED = 0x87


def test_tenant_cannot_read_another_tenants_responses_or_requests(server_process, registry_root, mqtt_client, broker):
    server_process(registry_root)
    spy = mqtt_client("tenant-a", listen=False)
    for topic in (
        broker.response_topic("tenant-b"),
        broker.response_topic("tenant-b") + "/#",
        broker.request_topic("tenant-b"),
        f"$share/ml-serving/{broker.request_topic('tenant-b')}",
        "#",
    ):
        codes = spy.subscribe(topic)
        assert len(codes) == 1  # granted or refused: either way nothing of tenant B may arrive
    victim = mqtt_client("tenant-b")
    answer = victim.request({"series": SERIES})
    assert answer["tenant"] == "tenant-b"
    time.sleep(0.5)
    leaked = [a for a in spy.all_answers if a.body.get("tenant") == "tenant-b" or "tenant-b" in a.topic]
    assert leaked == []


def test_tenant_cannot_publish_on_another_tenants_topics(server_process, registry_root, mqtt_client, broker):
    server = server_process(registry_root)
    attacker = mqtt_client("tenant-a")
    victim = mqtt_client("tenant-b")
    forged_id = uuid.uuid4().hex
    mid = attacker.send({"id": forged_id, "series": SERIES}, topic=broker.request_topic("tenant-b"))
    assert attacker.publish_result(mid) == NOT_AUTHORIZED
    mid = attacker.send({"id": "fake-answer", "prediction": 1.0}, topic=broker.response_topic("tenant-b"))
    assert attacker.publish_result(mid) == NOT_AUTHORIZED
    time.sleep(0.5)
    assert forged_id not in victim.answers and "fake-answer" not in victim.answers
    assert server.metric("mlserving_requests_total", tenant="tenant-b") == 0


def test_wrong_password_is_refused(broker):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set("tenant-a", "not-the-password")
    result = {}
    client.on_connect = lambda c, u, f, rc, p: result.setdefault("rc", rc)
    client.connect(broker.host, broker.port)
    deadline = time.monotonic() + 5
    while "rc" not in result and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    assert result["rc"].is_failure


def test_server_connects_over_tls_and_verifies_the_broker(broker, server_process, registry_root, mqtt_client, tls_files):
    server = server_process(
        registry_root,
        broker={"port": broker.local.tls_port, "tls": {"enabled": True, "ca_file": str(tls_files.ca_file)}},
    )
    assert server.metric("mlserving_broker_connected") == 1
    assert "prediction" in mqtt_client("tenant-a").request({"series": SERIES})


def test_server_refuses_a_broker_certificate_it_cannot_verify(broker, server_process, registry_root, tmp_path, until):
    from mlserving_common.mosquitto import make_test_certificates

    other_ca = make_test_certificates(tmp_path / "other").ca_file
    server = server_process(
        registry_root,
        wait=False,
        broker={"port": broker.local.tls_port, "tls": {"enabled": True, "ca_file": str(other_ca)}},
    )
    until(lambda: server.status("/healthz") == 200)
    time.sleep(2)
    status, body = server.get("/readyz")
    assert status == 503 and '"connected":false' in body
    assert server.proc.poll() is None  # keeps retrying, never exits because of the broker
