"""More QoS 1 answers outstanding than MQTT has packet ids: none may be dropped.

A flood answered faster than the broker acknowledges once left >65,535 answers queued in the
server's client; paho then refused new ones (MQTT_ERR_QUEUE_SIZE) and those requests were never
answered (seen as `lost` in the fairness test on a busy machine). The server's connection now
keeps answers beyond its inflight window waiting, in order, without a packet id.
"""

from __future__ import annotations

import threading

from mlserving_common import mqtt as connection_layer
from mlserving_common import protocol
from mlserving_server.config import parse_config
from mlserving_server.transport import connect_options

from mqtt_support import connect_as

COUNT = 70_000  # > 65,535 packet ids


def test_answers_beyond_the_packet_id_space_are_all_delivered(broker) -> None:
    topic = f"{broker.response_topic('tenant-a')}/ids"
    seen: set[bytes] = set()
    done = threading.Event()

    def on_message(message: connection_layer.Message) -> None:
        seen.add(message.payload)
        if len(seen) == COUNT:
            done.set()

    reader = connect_as(broker, "tenant-a", protocol.owned_client_id("tenant-a", "ids-reader"), on_message=on_message)
    reader.subscribe(topic, qos=0)

    username, password = broker.credentials("server")
    config = parse_config(
        {
            "broker": {"host": broker.host, "port": broker.port, "username": username},
            "tenants": {"tenant-a": {"models": {"lstm": "current"}}},
        },
        env={"MLSERVING_BROKER_PASSWORD": password},
    )
    outstanding: list[int] = []
    writer: connection_layer.Connection

    def flood(ack: connection_layer.ConnAck) -> None:
        # From the network thread, so no PUBACK is handled meanwhile: all COUNT are outstanding at once.
        deliveries = [writer.publish(topic, str(i).encode(), qos=1) for i in range(COUNT)]
        outstanding.append(writer.unacknowledged())
        flooded.extend(deliveries)

    flooded: list[connection_layer.Delivery] = []
    writer = connection_layer.Connection(
        connect_options(config, protocol.owned_client_id("server", "ids-writer")), on_connect=flood
    )
    try:
        writer.connect(timeout=10)
        assert outstanding == [COUNT]
        assert done.wait(120), f"{len(seen)} of {COUNT} delivered"
        refused = [d for d in flooded if d.wait(30) != 0]
        assert refused == []
    finally:
        writer.close()
        reader.close()
