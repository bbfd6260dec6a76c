"""The MQTT layer comparison's pure parts: its table rows (report.layer_rows), and the mqtt5 echo's QoS 1 bookkeeping.

No broker and nothing timed here: rows come from a results dict written by hand, and the mqtt5
echo talks to the test over a socketpair (tests/integration/test_bench_layer_candidates.py runs every
candidate against a real Mosquitto).
"""

from __future__ import annotations

import argparse
import socket
import threading
from pathlib import Path
from typing import Any

import mqtt5
import pytest

from mlserving_bench import mqtt_layers, report

SHARED = "$share/ml-serving/ml/layer-mqtt5/requests"


def _measured(cpu: float | None, throughput: float, **extra: Any) -> dict[str, Any]:
    return {
        "throughput": throughput,
        "answered": 100,
        "lost": 0,
        "errors": 0,
        "p50_ms": 0.2,
        "p99_ms": 1.5,
        "cpu_us_per_request": cpu,
        "broker_cpu_us_per_request": 20.0,
        **extra,
    }


def _section() -> dict[str, Any]:
    fast = {
        "label": "fast lib",
        "rounds": [_measured(10.0, 9000.0), _measured(12.0, 11000.0)],
        "saturation": 11000.0,
        "cpu_us_per_request": 12.0,
        "broker_cpu_us_per_request": 20.0,
        "at_rate": _measured(40.0, 1000.0),
        "rss_mb": 30.0,
        "ready_seconds": 0.2,
    }
    slow = {
        "label": "slow lib",
        "rounds": [_measured(60.0, 3000.0, lost=3)],
        "saturation": 3000.0,
        "cpu_us_per_request": 60.0,
        "at_rate": _measured(90.0, 1000.0),
    }
    broken = {"label": "broken lib", "error": "RuntimeError: layer-broken exited with 1:\nTraceback ..."}
    plan = {"rounds": 2, "saturation_seconds": 4.0, "rate": 1000.0, "rate_seconds": 6.0}
    return {"plan": plan, "candidates": {"fast": fast, "slow": slow, "broken": broken}}


def test_two_rows_per_candidate_with_cpu_first_and_relative_to_the_cheapest() -> None:
    rows = report.layer_rows({"layers": _section()})
    assert [r.measurement.split(":")[0] for r in rows] == ["fast lib"] * 2 + ["slow lib"] * 2 + ["broken lib"] * 2
    fast_cpu, fast_speed, slow_cpu, slow_speed, broken_cpu, broken_speed = rows
    assert fast_cpu.measurement == "fast lib: CPU per answer at saturation | at 1,000/s"
    assert fast_cpu.result == "12.0 µs | 40.0 µs"
    assert fast_cpu.target == "1.00× the cheapest; broker 20.0 µs"
    assert slow_cpu.target == "5.00× the cheapest"
    assert fast_speed.result == "11,000/s | 0.20 ms / 1.50 ms"
    assert fast_speed.target == "best of 9,000 / 11,000; RSS 30 MB; ready in 0.20 s"
    assert slow_speed.target == "3 lost, 0 errors"
    assert broken_cpu.result == "n/a | n/a"
    assert broken_cpu.target == "RuntimeError: layer-broken exited with 1:"
    assert broken_speed.result == "n/a | n/a / n/a"


def test_the_comparison_is_part_of_the_one_table_and_reads_na_when_it_did_not_run() -> None:
    rows = [r for r in report.rows({"layers": _section(), "errors": {}}) if r.step == report.LAYERS_STEP]
    assert len(rows) == 6
    missing = [r for r in report.rows({"errors": {}}) if r.step == report.LAYERS_STEP]
    assert [(r.measurement, r.result) for r in missing] == [("echo on each candidate MQTT library", "n/a")]


def test_every_candidate_has_a_tenant_and_a_way_to_start() -> None:
    assert tuple(f"layer-{name}" for name in mqtt_layers.LAYERS) == mqtt_layers.TENANTS
    for name in mqtt_layers.LAYERS:
        assert name in mqtt_layers.SERVE or name in mqtt_layers.MODULES


def _setup(tmp_path: Path) -> mqtt_layers.Setup:
    args = argparse.Namespace(
        host="127.0.0.1",
        port=1,
        username="server",
        topic="ml/layer-mqtt5/requests",
        share_group="ml-serving",
        qos=1,
        ready_file=tmp_path / "ready",
        layer="mqtt5",
    )
    return mqtt_layers.Setup.from_args(args, args.layer)


def test_setup_uses_an_owned_client_id_and_the_servers_shared_subscription(tmp_path: Path) -> None:
    setup = _setup(tmp_path)
    assert setup.client_id.startswith("server:mqtt5-")
    assert setup.shared == SHARED


def _decode_all(data: bytes) -> list[Any]:
    packets, view, offset = [], memoryview(data), 0
    while offset < len(data):
        packet, used = mqtt5.read(view[offset:])
        packets.append(packet)
        offset += used
    return packets


def _request(packet_id: int, correlation: bytes) -> mqtt5.PublishPacket:
    return mqtt5.PublishPacket(
        "ml/layer-mqtt5/requests",
        b'{"id": "x"}',
        qos=mqtt5.QoS.AT_LEAST_ONCE,
        packet_id=packet_id,
        response_topic="ml/layer-mqtt5/responses/c1",
        correlation_data=correlation,
    )


def test_mqtt5_echo_answers_within_the_brokers_receive_maximum_and_acks_after_answering(tmp_path: Path) -> None:
    ours, _theirs = socket.socketpair()
    echo = mqtt_layers.Mqtt5Echo(_setup(tmp_path), ours)

    def handle(packet: Any) -> list[Any]:
        echo._handle(packet)
        sent = _decode_all(b"".join(echo.out))
        echo.out.clear()
        return sent

    (subscribe,) = handle(mqtt5.ConnAckPacket(receive_max=1))
    assert isinstance(subscribe, mqtt5.SubscribePacket)
    assert [f.pattern for f in subscribe.topic_filters] == [SHARED]
    assert handle(mqtt5.SubAckPacket(subscribe.packet_id, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE])) == []
    assert (tmp_path / "ready").exists()

    answer, ack = handle(_request(7, b"one"))
    assert (answer.topic, answer.payload, answer.correlation_data) == (
        "ml/layer-mqtt5/responses/c1",
        b'{"id": "x"}',
        b"one",
    )
    assert answer.qos == mqtt5.QoS.AT_LEAST_ONCE
    assert isinstance(ack, mqtt5.PubAckPacket) and ack.packet_id == 7

    assert handle(_request(8, b"two")) == []  # the one slot is taken: held, not acknowledged
    second, ack = handle(mqtt5.PubAckPacket(answer.packet_id))
    assert second.correlation_data == b"two"
    assert ack.packet_id == 8
    ours.close()


def test_mqtt5_echo_refuses_to_serve_without_its_subscription(tmp_path: Path) -> None:
    ours, _theirs = socket.socketpair()
    echo = mqtt_layers.Mqtt5Echo(_setup(tmp_path), ours)
    with pytest.raises(ConnectionError, match="subscription refused"):
        echo._handle(mqtt5.SubAckPacket(1, [mqtt5.SubAckReasonCode.NOT_AUTHORIZED]))
    assert not (tmp_path / "ready").exists()
    ours.close()


def test_mqtt5_echo_loop_reassembles_split_packets_and_disconnects_on_stop(tmp_path: Path) -> None:
    ours, broker = socket.socketpair()
    broker.settimeout(30)
    echo = mqtt_layers.Mqtt5Echo(_setup(tmp_path), ours)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            echo.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    received = bytearray()

    def expect(kind: type) -> Any:
        while True:
            try:
                packet, used = mqtt5.read(memoryview(bytes(received)))
            except IndexError:
                received.extend(broker.recv(65536))
                continue
            del received[:used]
            assert isinstance(packet, kind)
            return packet

    connect = expect(mqtt5.ConnectPacket)
    assert connect.client_id.startswith("server:") and connect.clean_start
    greeting = mqtt5.ConnAckPacket().write()
    broker.sendall(greeting[:2])  # a packet cut in two: nothing may happen until the rest is in
    broker.sendall(greeting[2:])
    subscribe = expect(mqtt5.SubscribePacket)
    request = _request(3, b"corr")
    data = mqtt5.SubAckPacket(subscribe.packet_id, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE]).write()
    data += request.write()
    broker.sendall(data[:-5])
    broker.sendall(data[-5:])
    answer = expect(mqtt5.PublishPacket)
    assert answer.correlation_data == b"corr"
    assert expect(mqtt5.PubAckPacket).packet_id == 3
    echo.stop()
    expect(mqtt5.DisconnectPacket)
    thread.join(30)
    assert not thread.is_alive() and failure == []
