"""One tenant cannot exhaust the broker's memory (issue 13, finding 8).

With the limits every local broker renders (mlserving_common.mosquitto.DEFAULT_LIMITS, the same
as the chart's), tenant-a floods from several connections with each kind of message that
used to blow the broker past its pod limit, while the broker's RSS is sampled from /proc and
tenant-b's requests go through their own real server. The broker must stay under the chart's
memory limit for it (charts/ml-serving/values.yaml broker.resources.limits.memory) and tenant-b
must keep its answers. A flood stops early if the broker passes that limit (as the OOM killer
would stop the pod), so a regression fails fast instead of eating the machine. tenant-a's own
server is stopped (SIGSTOP) during each flood, as a server starved of CPU or in a long pause
would be: the backlog then sits in the broker, which is the case the limits must bound.

Before the limits (max_queued_bytes 0, max_queued_messages 100000, message_size_limit 2 MiB):
~2 MB publishes took the broker past 512 MiB in about a second.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import mqtt5
import pytest
import yaml

from mlserving_common import protocol

from mqtt_support import RawClient, connect_as

REPO = Path(__file__).resolve().parents[2]
SERIES = [310.0, 305.0, 298.0, 301.0, 312.0, 320.0]
TENANT_A_ONLY = {"tenant-a": {"models": {"lstm": "current"}}}
TENANT_B_ONLY = {"tenant-b": {"models": {"ann": "current"}}}
FLOOD_SECONDS = 8.0
CONNECTIONS = 4


def chart_broker_limit() -> int:
    """The broker container's memory limit in the chart's default values, in bytes."""
    values = yaml.safe_load((REPO / "charts/ml-serving/values.yaml").read_text())
    text = values["broker"]["resources"]["limits"]["memory"]
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """Peak RSS of a process, sampled every 20 ms; `over` is set once it passes `limit`."""

    def __init__(self, pid: int, limit: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.limit = pid, limit
        self.peak = rss_bytes(pid)
        self.over = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                value = rss_bytes(self.pid)
            except FileNotFoundError:
                return
            self.peak = max(self.peak, value)
            if value > self.limit:
                self.over.set()
            time.sleep(0.02)


def publish_packet(
    topic: str,
    payload: bytes,
    qos: int,
    packet_id: int,
    response_topic: str | None = None,
    correlation: bytes | None = None,
) -> bytes:
    """An MQTT v5 PUBLISH, encoded here and written to a raw socket so a flood has the socket's own backpressure."""
    return mqtt5.PublishPacket(
        topic,
        payload,
        qos=mqtt5.QoS(qos),
        packet_id=packet_id if qos else None,
        response_topic=response_topic,
        correlation_data=correlation,
    ).write()


class Flooder(threading.Thread):
    """One tenant-a connection publishing the same message as fast as the broker takes it,
    reconnecting when the broker drops it (bounded by `deadline` and `stop`)."""

    def __init__(self, broker, packet_for, qos: int, deadline: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.broker, self.packet_for, self.qos, self.deadline, self.stop = broker, packet_for, qos, deadline, stop
        self.sent = self.connections = self.dropped = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.broker.host, self.broker.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        username, password = self.broker.credentials("tenant-a")
        sock.sendall(
            mqtt5.ConnectPacket(
                protocol.owned_client_id("tenant-a"),
                username=username,
                password=password.encode(),
                clean_start=True,
                keep_alive=30,
            ).write()
        )
        connack = sock.recv(64)
        assert connack[:1] == b"\x20" and connack[3:4] == b"\x00", connack
        sock.settimeout(None)
        threading.Thread(target=self._drain, args=(sock,), daemon=True).start()  # PUBACKs
        self.connections += 1
        return sock

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def run(self) -> None:
        packet_id = 0
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                sock = self._connect()
            except (OSError, AssertionError):
                time.sleep(0.05)
                continue
            try:
                while not self.stop.is_set() and time.monotonic() < self.deadline:
                    packet_id = packet_id % 65535 + 1
                    sock.sendall(self.packet_for(packet_id))
                    self.sent += 1
            except OSError:
                self.dropped += 1
            finally:
                sock.close()


def flood(broker, packet_for, qos: int, limit: int, servers, load) -> dict:
    """Flood from CONNECTIONS tenant-a connections for FLOOD_SECONDS, tenant-a's server stalled,
    while tenant-b sends 20 req/s to its own server."""
    victim, stalled = servers
    pid = broker.local._process.pid
    sampler = RssSampler(pid, limit)
    idle = rss_bytes(pid)
    sampler.start()
    stop = threading.Event()
    deadline = time.monotonic() + FLOOD_SECONDS
    flooders = [Flooder(broker, packet_for, qos, deadline, stop) for _ in range(CONNECTIONS)]
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    try:
        for flooder in flooders:
            flooder.start()
        watcher = threading.Thread(target=lambda: (sampler.over.wait(FLOOD_SECONDS + 5), stop.set()), daemon=True)
        watcher.start()
        outcome = load(victim, int(FLOOD_SECONDS * 20), SERIES, rate=20, timeout=30)
        stop.set()
        for flooder in flooders:
            flooder.join(30)
        time.sleep(0.5)
    finally:
        os.kill(stalled.proc.pid, signal.SIGCONT)
    sampler.stop.set()
    sampler.join(5)
    figures = {
        "idle_mib": round(idle / 2**20, 1),
        "peak_mib": round(sampler.peak / 2**20, 1),
        "limit_mib": round(limit / 2**20),
        "over_limit": sampler.over.is_set(),
        "sent": sum(f.sent for f in flooders),
        "connections": sum(f.connections for f in flooders),
        "dropped_by_broker": sum(f.dropped for f in flooders),
        "tenant_b": {k: outcome[k] for k in ("sent", "answered", "lost")},
        "tenant_b_errors": len(outcome["errors"]),
    }
    print(
        f"\nbroker RSS idle {figures['idle_mib']} MiB, peak {figures['peak_mib']} MiB"
        f" (limit {figures['limit_mib']} MiB);"
        f" {figures}"
    )
    return figures


@pytest.fixture
def servers(server_process, registry_root, mqtt_client):
    """tenant-a's and tenant-b's own servers (the chart's layout): (tenant-b's client, tenant-a's server)."""
    server_a = server_process(registry_root, tenants=TENANT_A_ONLY, name="server-a")
    server_process(registry_root, tenants=TENANT_B_ONLY, name="server-b")
    return mqtt_client("tenant-b"), server_a


@pytest.mark.parametrize("qos", [1, 0])
def test_two_megabyte_publishes_are_refused_and_the_broker_stays_under_its_limit(qos, broker, servers, load):
    topic = broker.request_topic("tenant-a")
    payload = b'{"series": [' + b"1.0, " * (2_000_000 // 5) + b"1.0]}"
    figures = flood(
        broker, lambda pid: publish_packet(topic, payload, qos, pid), qos, chart_broker_limit(), servers, load
    )
    assert not figures["over_limit"] and figures["peak_mib"] < figures["limit_mib"], figures
    assert figures["tenant_b"]["lost"] == 0 and figures["tenant_b_errors"] == 0, figures


@pytest.mark.parametrize("qos", [1, 0])
def test_max_size_valid_requests_keep_the_broker_under_its_limit(qos, broker, servers, load):
    """Payloads just under the broker's message_size_limit (the biggest it accepts), as fast as
    four connections can push them to tenant-a's own server."""
    from mlserving_common.mosquitto import DEFAULT_LIMITS

    topic = broker.request_topic("tenant-a")
    size = int(DEFAULT_LIMITS["message_size_limit"]) - 1024
    payload = b'{"series": [' + b"1.0, " * ((size - 20) // 5) + b"1.0]}"
    assert len(payload) <= size
    figures = flood(
        broker, lambda pid: publish_packet(topic, payload, qos, pid), qos, chart_broker_limit(), servers, load
    )
    assert not figures["over_limit"] and figures["peak_mib"] < figures["limit_mib"], figures
    assert figures["tenant_b"]["lost"] == 0 and figures["tenant_b_errors"] == 0, figures


def test_an_offline_session_with_big_correlation_data_stays_bounded(broker, servers, load, mqtt_client):
    """tenant-a leaves a persistent session subscribed to its answers and sends requests whose
    answers go there with large Correlation Data: the issue's 65 kB is refused at the broker
    (PUBACK 0x87: Mosquitto's max_queued_bytes counts payload only, so properties are bounded by
    the plugin's max_properties_bytes): a flood of such requests leaves the broker bounded."""
    offline_id = protocol.owned_client_id("tenant-a", "offline")
    reply_topic = f"{broker.response_topic('tenant-a')}/{offline_id}"
    session = connect_as(broker, "tenant-a", offline_id, clean_start=False, session_expiry=3600)
    session.subscribe(reply_topic, qos=1)
    session.close()

    topic = broker.request_topic("tenant-a")
    body = protocol.encode_request(SERIES)
    correlation = b"c" * 65000  # what the issue used
    figures = flood(
        broker,
        lambda pid: publish_packet(topic, body, 1, pid, reply_topic, correlation),
        1,
        chart_broker_limit(),
        servers,
        load,
    )
    assert not figures["over_limit"] and figures["peak_mib"] < figures["limit_mib"], figures
    assert figures["tenant_b"]["lost"] == 0 and figures["tenant_b_errors"] == 0, figures
    sender = mqtt_client("tenant-a", listen=False)
    mid = sender.publish_raw(body, topic=topic, response_topic=reply_topic, correlation=correlation)
    assert sender.publish_result(mid) == 0x87  # refused with an error, not queued


def test_a_tenants_offline_sessions_are_queued_nothing(broker, server_process, registry_root):
    """A tenant could otherwise park any number of persistent sessions (connect with a session
    expiry, subscribe to its own answers, leave) and fill each one's queue with answers to its
    own requests: the connection cap cannot count sessions that are offline. The plugin queues
    nothing for a tenant's offline session (the trainer's, a service account, still queues:
    test_broker_isolation.py, test_lifecycle_records.py). An online session beside it gets its
    answers, which shows the server answered both halves."""
    server_process(registry_root, tenants=TENANT_A_ONLY, name="server-a")
    received: dict[str, list[bytes]] = {"offline": [], "online": []}

    def session(name: str) -> tuple[RawClient, str]:
        client_id = protocol.owned_client_id("tenant-a", f"parked-{name}")
        reply = f"{broker.response_topic('tenant-a')}/{client_id}"
        client = connect_as(
            broker,
            "tenant-a",
            client_id,
            clean_start=False,
            session_expiry=3600,
            on_message=lambda message: received[name].append(message.payload),
        )
        assert not client.refused, client.reason_code
        assert client.subscribe(reply, qos=1) == [1]
        return client, reply

    offline, offline_reply = session("offline")
    online, online_reply = session("online")
    time.sleep(0.5)  # both SUBSCRIBEs processed
    offline.close()

    sender = connect_as(broker, "tenant-a", protocol.owned_client_id("tenant-a"))
    count = 200
    for i in range(count):
        sender.publish(
            broker.request_topic("tenant-a"),
            protocol.encode_request(SERIES),
            qos=1,
            timeout=10,
            response_topic=offline_reply if i % 2 else online_reply,
            correlation_data=f"c{i}".encode(),
        )
    deadline = time.monotonic() + 60
    while len(received["online"]) < count // 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    sender.close()
    assert len(received["online"]) == count // 2, received["online"][-3:]
    time.sleep(1.0)  # the server answers in order; the offline half was answered by now

    offline, _ = session("offline")  # resume the parked session: what did the broker keep for it?
    time.sleep(2.0)
    offline.close()
    online.close()
    print(
        f"\noffline session: {len(received['offline'])} of {count // 2} answers queued; "
        f"online: {len(received['online'])}"
    )
    assert received["offline"] == []
    assert "offline_session" in broker.local.log_path.read_text(errors="replace")
