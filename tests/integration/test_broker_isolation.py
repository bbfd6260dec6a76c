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

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mlserving_common import protocol
from mlserving_training.config import TrainConfig

SERIES = [310.0, 305.0, 298.0, 301.0, 312.0, 320.0]
NOT_AUTHORIZED = 0x87
TENANT_B_ONLY = {"tenant-b": {"models": {"ann": "current"}}}


def connect_as(broker, username: str, client_id: str, clean_start: bool = True,
               session_expiry: int = 0, timeout: float = 10.0) -> tuple[mqtt.Client, object]:
    """Connect once (no retries) and return (client, CONNACK reason code)."""
    result: dict[str, object] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(*broker.credentials(username))
    client.reconnect_delay_set(30, 60)  # one attempt per test step, not paho's quick retries

    def on_connect(c, u, flags, reason_code, properties) -> None:
        result["rc"] = reason_code
        done.set()

    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = session_expiry
    client.connect(broker.host, broker.port, keepalive=10, clean_start=clean_start, properties=properties)
    client.loop_start()
    assert done.wait(timeout), f"no CONNACK for {client_id}"
    return client, result["rc"]


def close(client: mqtt.Client) -> None:
    client.loop_stop()
    client.disconnect()


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
    print(f"\n{spies} spy(ies): SUBACK {codes}, tenant-b sent {outcome['sent']}, answered {outcome['answered']},"
          f" lost {outcome['lost']}")
    assert codes == [[NOT_AUTHORIZED]] * spies  # refused at subscribe time, not filtered on delivery
    assert outcome["lost"] == 0 and outcome["errors"] == []
    until(lambda: broker_log(broker).count(f'refused subscribe user="tenant-a"') >= spies, timeout=10)
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


def test_takeover_of_a_running_servers_client_id_is_refused(
    broker, server_process, registry_root, mqtt_client, load
):
    server = server_process(registry_root, tenants=TENANT_B_ONLY)
    server_id = _server_client_id(broker)
    victim = mqtt_client("tenant-b")
    stop = threading.Event()
    attempts: list[object] = []

    def attack() -> None:
        while not stop.is_set() and len(attempts) < 40:
            client, reason = connect_as(broker, "tenant-a", server_id)
            attempts.append(reason)
            close(client)
            time.sleep(0.1)

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        outcome = load(victim, 300, SERIES, rate=60, timeout=60)
    finally:
        stop.set()
        attacker.join(30)
    print(f"\ntakeover of {server_id}: {len(attempts)} attempts, tenant-b answered {outcome['answered']}/300, "
          f"lost {outcome['lost']}")
    assert attempts and all(reason.is_failure for reason in attempts), attempts
    assert outcome["lost"] == 0 and outcome["errors"] == []
    assert server.metric("mlserving_broker_connected") == 1
    assert f'refused connect user="tenant-a" client="{server_id}"' in broker_log(broker)


def test_takeover_of_the_trainers_persistent_session_is_refused(broker):
    """tenant-a cannot resume or wipe the trainer's session: its queued live records stay intact."""
    session_id = TrainConfig(model="lstm", broker_username="trainer").session_client_id
    records = protocol.records_filter(prefix=broker.prefix)
    trainer, reason = connect_as(broker, "trainer", session_id, clean_start=False, session_expiry=3600)
    assert not reason.is_failure, reason
    subscribed = threading.Event()
    trainer.on_subscribe = lambda *args: subscribed.set()
    trainer.subscribe(records, qos=1)
    assert subscribed.wait(10)
    close(trainer)  # offline now: the broker queues records for it

    server, _ = connect_as(broker, "server", protocol.owned_client_id("server"))
    sent = [f"record-{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(20)]
    for payload in sent:
        server.publish(protocol.records_topic("tenant-b", "BTS001/1", broker.prefix), payload, qos=1).wait_for_publish(10)
    close(server)

    for clean_start in (True, False):  # wipe it, or resume it (and drain the records itself)
        intruder, reason = connect_as(broker, "tenant-a", session_id, clean_start=clean_start, session_expiry=3600)
        close(intruder)
        assert reason.is_failure, f"tenant-a logged in as {session_id} (clean_start={clean_start})"

    received: list[bytes] = []
    trainer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=session_id, protocol=mqtt.MQTTv5)
    trainer.username_pw_set(*broker.credentials("trainer"))
    trainer.on_message = lambda c, u, message: received.append(message.payload)
    present: dict[str, bool] = {}
    trainer.on_connect = lambda c, u, flags, rc, p: present.setdefault("session", flags.session_present)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    trainer.connect(broker.host, broker.port, clean_start=False, properties=properties)
    trainer.loop_start()
    deadline = time.monotonic() + 15
    while len(received) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    close(trainer)
    print(f"\ntrainer session {session_id}: {len(received)}/{len(sent)} queued records intact")
    assert present.get("session") is True
    assert sorted(received) == sorted(sent)
    assert f'refused connect user="tenant-a" client="{session_id}"' in broker_log(broker)


@pytest.mark.parametrize("tenant,username", [("tenant-a", "tenant-a"), ("legacy", "legacy")])
def test_subscribes_outside_a_tenants_topics_are_refused_and_logged(tenant, username, broker, mqtt_client, until):
    client = mqtt_client(username, tenant=tenant, listen=False)
    other = broker.response_topic("tenant-b")
    refused = ["#", "$SYS/#", "$SYS/broker/clients/connected", f"{broker.prefix}/_registry/#",
               f"{broker.prefix}/_records/#", f"{other}/#", f"{other}/tenant-b:abc", "+/+/responses/#",
               f"$share/ml-serving/{other}/#", f"$share/ml-serving/{broker.request_topic('tenant-b')}",
               f"$share/ml-serving/{broker.request_topic(tenant)}", broker.request_topic(tenant)]
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
    mids = [attacker.send({"id": f"x{i}", "series": SERIES}, topic=broker.request_topic("tenant-b"))
            for i in range(count)]
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
    users = [BrokerUser("tenant-a", uuid.uuid4().hex, tenant_acl(*topics)),
             BrokerUser("server", uuid.uuid4().hex, server_acl([topics]), service=True)]
    with LocalBroker(users, workdir=tmp_path / "mosquitto", plugin_options={"publish_rate": 20}) as local:
        codes: dict[str, list[int]] = {}
        for username, topic in (("tenant-a", topics[0]), ("server", topics[1])):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=protocol.owned_client_id(username),
                                 protocol=mqtt.MQTTv5)
            client.username_pw_set(*local.credentials(username))
            client.on_publish = lambda c, u, mid, rc, p, name=username: codes.setdefault(name, []).append(rc.value)
            client.connect(local.host, local.port)
            client.loop_start()
            for i in range(100):
                client.publish(topic, b"x", qos=1)
            deadline = time.monotonic() + 20
            while len(codes.get(username, [])) < 100 and time.monotonic() < deadline:
                time.sleep(0.05)
            close(client)
        log = local.log_path.read_text()
    refused = codes["tenant-a"].count(NOT_AUTHORIZED)
    print(f"\npublish budget 20/s: tenant-a 100 publishes, {refused} refused; server {codes['server'].count(NOT_AUTHORIZED)}")
    assert len(codes["tenant-a"]) == 100 and 50 <= refused < 100  # a 1 s burst of ~20 passes
    assert NOT_AUTHORIZED not in codes["server"]
    assert 'refused publish user="tenant-a"' in log and "reason=rate_limited" in log


def test_wrong_passwords_are_logged_with_the_username(broker, until):
    """The password file refuses after our plugin; the plugin still names the user in the log."""
    client, reason = connect_as_with_password(broker, "tenant-b", "not-the-password")
    close(client)
    assert reason.is_failure
    until(lambda: 'refused connect user="tenant-b"' in broker_log(broker), timeout=10)
    assert 'reason=bad_password' in broker_log(broker)


def test_a_connection_cap_per_tenant_refuses_the_excess_and_frees_on_disconnect(tmp_path):
    """Optional (max_connections): a tenant cannot open unbounded sessions, each of which the
    broker would have to buffer for; services are exempt."""
    from mlserving_common.mosquitto import BrokerUser, LocalBroker, server_acl, tenant_acl, tenant_topics

    topics = tenant_topics("tenant-a")
    users = [BrokerUser("tenant-a", uuid.uuid4().hex, tenant_acl(*topics)),
             BrokerUser("server", uuid.uuid4().hex, server_acl([topics]), service=True)]
    with LocalBroker(users, workdir=tmp_path / "mosquitto", plugin_options={"max_connections": 3}) as local:
        handle = type("Handle", (), {"host": local.host, "port": local.port, "credentials": local.credentials})()
        opened = [connect_as(handle, "tenant-a", protocol.owned_client_id("tenant-a")) for _ in range(5)]
        services = [connect_as(handle, "server", protocol.owned_client_id("server")) for _ in range(5)]
        outcomes = [not reason.is_failure for _, reason in opened]
        for client, _ in opened + services:
            close(client)
        time.sleep(0.5)
        again, reason = connect_as(handle, "tenant-a", protocol.owned_client_id("tenant-a"))
        close(again)
        log = local.log_path.read_text()
    assert outcomes == [True, True, True, False, False]
    assert all(not reason.is_failure for _, reason in services)
    assert not reason.is_failure  # the closed connections no longer count
    assert "reason=too_many_connections" in log


def connect_as_with_password(broker, username: str, password: str) -> tuple[mqtt.Client, object]:
    result: dict[str, object] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=protocol.owned_client_id(username),
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.on_connect = lambda c, u, f, rc, p: (result.setdefault("rc", rc), done.set())
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert done.wait(10)
    return client, result["rc"]
