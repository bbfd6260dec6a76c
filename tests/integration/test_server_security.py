"""Per-tenant ACLs on the broker: tenant A cannot read or write tenant B's topics; TLS with CA checks."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from mlserving_client import Client
from mlserving_common import mqtt
from mlserving_common.mosquitto import make_test_certificates

from mqtt_support import client_cli, connect_as

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


def predict_over_tls(broker, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI's `predict` as tenant-a on the broker's TLS port; `args` bring the secret and the CA."""
    return client_cli(
        "127.0.0.1", broker.local.tls_port, "predict", "--tenant", "tenant-a", *args, *map(str, SERIES), timeout=60
    )


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
    client = connect_as(broker, "tenant-a", password="not-the-password", timeout=5)
    client.close()
    assert client.refused


def test_server_connects_over_tls_and_verifies_the_broker(
    broker, server_process, registry_root, mqtt_client, tls_files
):
    server = server_process(
        registry_root,
        broker={"port": broker.local.tls_port, "tls": {"enabled": True, "ca_file": str(tls_files.ca_file)}},
    )
    assert server.metric("mlserving_broker_connected") == 1
    assert "prediction" in mqtt_client("tenant-a").request({"series": SERIES})


def test_server_refuses_a_broker_certificate_it_cannot_verify(broker, server_process, registry_root, tmp_path, until):
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


def test_client_library_and_cli_over_tls_verify_the_ca(broker, server_process, registry_root, tls_files, tmp_path):
    """Server and clients all on the TLS listener, each verifying the broker against the test CA."""
    server_process(
        registry_root,
        broker={"port": broker.local.tls_port, "tls": {"enabled": True, "ca_file": str(tls_files.ca_file)}},
    )
    user, password = broker.credentials("tenant-a")
    with Client(
        "127.0.0.1",
        broker.local.tls_port,
        user,
        password,
        tenant="tenant-a",
        tls_ca=str(tls_files.ca_file),
        timeout=10.0,
    ) as client:
        answer = client.predict(SERIES)
        assert answer.tenant == "tenant-a" and answer.model == "lstm"
    password_file = tmp_path / "tenant-a.password"
    password_file.write_text(password)
    cli = predict_over_tls(broker, "--password-file", str(password_file), "--tls-ca", str(tls_files.ca_file))
    assert cli.returncode == 0, cli.stderr
    assert '"prediction"' in cli.stdout


def test_clients_refuse_a_broker_their_ca_did_not_sign(broker, tmp_path):
    other_ca = str(make_test_certificates(tmp_path / "other").ca_file)
    user, password = broker.credentials("tenant-a")
    with pytest.raises(ConnectionError):
        Client(
            "127.0.0.1", broker.local.tls_port, user, password, tenant="tenant-a", tls_ca=other_ca, connect_timeout=5.0
        )
    cli = predict_over_tls(broker, "--password", password, "--tls-ca", other_ca)
    assert cli.returncode == 3, (cli.returncode, cli.stdout, cli.stderr)  # 3: cannot connect


def test_plain_mqtt_client_on_the_tls_port_gets_nowhere(broker):
    """No silent downgrade: the TLS listener does not speak plain MQTT."""
    connected = []
    try:
        client = connect_as(broker, "tenant-a", port=broker.local.tls_port, timeout=3)
        connected.append(client.reason_code)
        client.close()
    except (mqtt.MqttError, TimeoutError, OSError):
        pass
    assert not any(rc < mqtt.REFUSED for rc in connected)
