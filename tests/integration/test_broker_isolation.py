"""A hostile tenant with valid credentials against the broker (issue 13, findings 1, 2 and the
refused SUBSCRIBEs of 7), on a real Mosquitto with our rendered config and plugin, real servers.

- Share-group theft: tenant-a joining `$share/ml-serving/ml/tenant-b/requests` took turns of
  tenant-b's requests that the broker then threw away (50 % lost with one spy, 75 % with three).
  Now the SUBSCRIBE is refused (SUBACK 0x87) and tenant-b loses nothing.
- Client-id takeover: tenant-a connecting with a server's or the trainer's client id kicked the
  server or wiped the trainer's persistent session. Now the CONNECT is refused, nothing is lost.
- Every SUBSCRIBE outside a tenant's own topics is refused at subscribe time, and every refusal
  is logged by the broker with the username (rate limited).
"""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest

from mlserving_common import mqtt, protocol
from mlserving_training.config import TrainConfig

from mqtt_support import connect_as

SERIES = [310.0, 305.0, 298.0, 301.0, 312.0, 320.0]
NOT_AUTHORIZED = 0x87
TENANT_B_ONLY = {"tenant-b": {"models": {"ann": "current"}}}


def broker_log(broker) -> str:
    return broker.local.log_path.read_text(errors="replace")


@pytest.mark.parametrize("spies", [1, 3])
def test_share_group_spies_are_refused_and_tenant_b_loses_nothing(
    spies, broker, server_process, registry_root, mqtt_client, load, until
):
    server_process(registry_root, tenants=TENANT_B_ONLY)
    group_topic = protocol.shared_subscription(broker.request_topic("tenant-b"))
    codes = []
    for _ in range(spies):
        spy = mqtt_client("tenant-a", listen=False)
        codes.append(spy.subscribe(group_topic))
    victim = mqtt_client("tenant-b")
    outcome = load(victim, 300, SERIES, timeout=30)
    print(
        f"\n{spies} spy(ies): SUBACK {codes}, tenant-b sent {outcome['sent']}, answered {outcome['answered']},"
        f" lost {outcome['lost']}"
    )
    assert codes == [[NOT_AUTHORIZED]] * spies  # refused at subscribe time, not filtered on delivery
    assert outcome["lost"] == 0 and outcome["errors"] == []
    until(lambda: broker_log(broker).count('refused subscribe user="tenant-a"') >= spies, timeout=10)
    assert f'filter="{group_topic}" reason=not_granted' in broker_log(broker)


def _server_client_id(broker, timeout: float = 20.0) -> str:
    """The running server's MQTT client id, as the broker logged its login."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(r"New client connected from \S+ as (\S+) \(p5, c\d, k\d+, u'server'\)")
    while time.monotonic() < deadline:
        found = pattern.findall(broker_log(broker))
        if found:
            return found[0]
        time.sleep(0.1)
    raise TimeoutError("the server's login is not in the broker log")


def test_takeover_of_a_running_servers_client_id_is_refused(broker, server_process, registry_root, mqtt_client, load):
    server = server_process(registry_root, tenants=TENANT_B_ONLY)
    server_id = _server_client_id(broker)
    victim = mqtt_client("tenant-b")
    stop = threading.Event()
    attempts: list[object] = []

    def attack() -> None:
        while not stop.is_set() and len(attempts) < 40:
            client = connect_as(broker, "tenant-a", server_id)
            attempts.append(client.reason_code)
            client.close()
            time.sleep(0.1)

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        outcome = load(victim, 300, SERIES, rate=60, timeout=60)
    finally:
        stop.set()
        attacker.join(30)
    print(
        f"\ntakeover of {server_id}: {len(attempts)} attempts, tenant-b answered {outcome['answered']}/300, "
        f"lost {outcome['lost']}"
    )
    assert attempts and all(reason >= mqtt.REFUSED for reason in attempts), attempts
    assert outcome["lost"] == 0 and outcome["errors"] == []
    assert server.metric("mlserving_broker_connected") == 1
    assert f'refused connect user="tenant-a" client="{server_id}"' in broker_log(broker)


def test_takeover_of_the_trainers_persistent_session_is_refused(broker):
    """tenant-a cannot resume or wipe the trainer's session: its queued live records stay intact."""
    session_id = TrainConfig(model="lstm", broker_username="trainer").session_client_id
    records = protocol.records_filter(prefix=broker.prefix)
    trainer = connect_as(broker, "trainer", session_id, clean_start=False, session_expiry=3600)
    assert not trainer.refused, trainer.reason_code
    trainer.subscribe(records, qos=1)
    trainer.close()  # offline now: the broker queues records for it

    server = connect_as(broker, "server", protocol.owned_client_id("server"))
    sent = [f"record-{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(20)]
    for payload in sent:
        server.publish(protocol.records_topic("tenant-b", "BTS001/1", broker.prefix), payload, qos=1)
    server.close()

    for clean_start in (True, False):  # wipe it, or resume it (and drain the records itself)
        intruder = connect_as(broker, "tenant-a", session_id, clean_start=clean_start, session_expiry=3600)
        intruder.close()
        assert intruder.refused, f"tenant-a logged in as {session_id} (clean_start={clean_start})"

    trainer = connect_as(broker, "trainer", session_id, clean_start=False, session_expiry=3600)
    present = {"session": trainer.connack.session_present} if trainer.connack else {}
    trainer.wait_messages(len(sent), timeout=15)
    trainer.close()
    received = trainer.payloads()
    print(f"\ntrainer session {session_id}: {len(received)}/{len(sent)} queued records intact")
    assert present.get("session") is True
    assert sorted(received) == sorted(sent)
    assert f'refused connect user="tenant-a" client="{session_id}"' in broker_log(broker)


@pytest.mark.parametrize("tenant,username", [("tenant-a", "tenant-a"), ("legacy", "legacy")])
def test_subscribes_outside_a_tenants_topics_are_refused_and_logged(tenant, username, broker, mqtt_client, until):
    client = mqtt_client(username, tenant=tenant, listen=False)
    other = broker.response_topic("tenant-b")
    refused = [
        "#",
        "$SYS/#",
        "$SYS/broker/clients/connected",
        f"{broker.prefix}/_registry/#",
        f"{broker.prefix}/_records/#",
        f"{other}/#",
        f"{other}/tenant-b:abc",
        "+/+/responses/#",
        f"$share/ml-serving/{other}/#",
        f"$share/ml-serving/{broker.request_topic('tenant-b')}",
        f"$share/ml-serving/{broker.request_topic(tenant)}",
        broker.request_topic(tenant),
    ]
    codes = {topic: client.subscribe(topic) for topic in refused}
    assert codes == {topic: [NOT_AUTHORIZED] for topic in refused}
    own = broker.response_topic(tenant)
    granted = [f"{own}/#", own, f"{own}/{client.client_id}", f"{own}/+", f"$share/mine/{own}/#"]
    assert {topic: client.subscribe(topic) for topic in granted} == {topic: [1] for topic in granted}
    until(lambda: broker_log(broker).count(f'refused subscribe user="{username}"') >= len(refused), timeout=10)
    log = broker_log(broker)
    for topic in refused:
        assert f'refused subscribe user="{username}" client="{client.client_id}" filter="{topic}"' in log, topic


def test_refused_publishes_are_logged_with_the_username_and_rate_limited(broker, mqtt_client, until):
    """A flood of refused publishes is visible (NOTICE lines with the username) but is not a flood
    of log lines: at most log_per_second a second, then one 'suppressed N' line."""
    attacker = mqtt_client("tenant-a", listen=False)
    count = 500
    mids = [
        attacker.send({"id": f"x{i}", "series": SERIES}, topic=broker.request_topic("tenant-b")) for i in range(count)
    ]
    assert {attacker.publish_result(mid, timeout=30) for mid in mids} == {NOT_AUTHORIZED}
    until(lambda: "suppressed" in broker_log(broker), timeout=15)
    log = broker_log(broker)
    lines = [line for line in log.splitlines() if 'refused publish user="tenant-a"' in line]
    suppressed = sum(int(n) for n in re.findall(r"suppressed (\d+) refusal line", log))
    print(f"\n{count} refused publishes: {len(lines)} log lines, {suppressed} suppressed")
    assert lines and f'topic="{broker.request_topic("tenant-b")}" reason=not_granted' in lines[0]
    assert len(lines) < count / 2  # rate limited (20 a second by default)
    assert len(lines) + suppressed <= count


def test_tenant_publish_budget_refuses_the_excess_with_an_error(tmp_path):
    """With a per-tenant publish budget, the broker answers a flood's excess with PUBACK 0x87
    (the sender sees an error) instead of accepting it; the serving login is exempt."""
    from mlserving_common.mosquitto import BrokerUser, LocalBroker, server_acl, tenant_acl, tenant_topics

    topics = tenant_topics("tenant-a")
    users = [
        BrokerUser("tenant-a", uuid.uuid4().hex, tenant_acl(*topics)),
        BrokerUser("server", uuid.uuid4().hex, server_acl([topics]), service=True),
    ]
    with LocalBroker(users, workdir=tmp_path / "mosquitto", plugin_options={"publish_rate": 20}) as local:
        codes: dict[str, list[int]] = {}
        for username, topic in (("tenant-a", topics[0]), ("server", topics[1])):
            client = connect_as(local, username, protocol.owned_client_id(username))
            deliveries = [client.connection.publish(topic, b"x", qos=1) for _ in range(100)]
            codes[username] = [delivery.wait(20) for delivery in deliveries]
            client.close()
        log = local.log_path.read_text()
    refused = codes["tenant-a"].count(NOT_AUTHORIZED)
    print(
        f"\npublish budget 20/s: tenant-a 100 publishes, {refused} refused;"
        f" server {codes['server'].count(NOT_AUTHORIZED)}"
    )
    assert len(codes["tenant-a"]) == 100 and 50 <= refused < 100  # a 1 s burst of ~20 passes
    assert NOT_AUTHORIZED not in codes["server"]
    assert 'refused publish user="tenant-a"' in log and "reason=rate_limited" in log


def test_wrong_passwords_are_logged_with_the_username(broker, until):
    """The password file refuses after our plugin; the plugin still names the user in the log."""
    client = connect_as(broker, "tenant-b", protocol.owned_client_id("tenant-b"), password="not-the-password")
    client.close()
    assert client.refused
    until(lambda: 'refused connect user="tenant-b"' in broker_log(broker), timeout=10)
    assert "reason=bad_password" in broker_log(broker)


def test_a_connection_cap_per_tenant_refuses_the_excess_and_frees_on_disconnect(tmp_path):
    """Optional (max_connections): a tenant cannot open unbounded sessions, each of which the
    broker would have to buffer for; services are exempt."""
    from mlserving_common.mosquitto import BrokerUser, LocalBroker, server_acl, tenant_acl, tenant_topics

    topics = tenant_topics("tenant-a")
    users = [
        BrokerUser("tenant-a", uuid.uuid4().hex, tenant_acl(*topics)),
        BrokerUser("server", uuid.uuid4().hex, server_acl([topics]), service=True),
    ]
    with LocalBroker(users, workdir=tmp_path / "mosquitto", plugin_options={"max_connections": 3}) as local:
        opened = [connect_as(local, "tenant-a", protocol.owned_client_id("tenant-a")) for _ in range(5)]
        services = [connect_as(local, "server", protocol.owned_client_id("server")) for _ in range(5)]
        outcomes = [not client.refused for client in opened]
        for client in opened + services:
            client.close()
        time.sleep(0.5)
        again = connect_as(local, "tenant-a", protocol.owned_client_id("tenant-a"))
        again.close()
        log = local.log_path.read_text()
    assert outcomes == [True, True, True, False, False]
    assert all(not client.refused for client in services)
    assert not again.refused  # the closed connections no longer count
    assert "reason=too_many_connections" in log
