"""More QoS 1 answers outstanding than MQTT has packet ids: none may be dropped.

A flood answered faster than the broker acknowledges once left >65,535 answers queued in the
server's client; paho then refused new ones (MQTT_ERR_QUEUE_SIZE) and those requests were never
answered (seen as `lost` in the fairness test on a busy machine).
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from mlserving_common import protocol
from mlserving_server.transport import _FastClient

COUNT = 70_000  # > 65,535 packet ids


def test_answers_beyond_the_packet_id_space_are_all_delivered(broker) -> None:
    topic = f"{broker.response_topic('tenant-a')}/ids"
    seen: set[bytes] = set()
    done = threading.Event()

    def on_message(client, userdata, message) -> None:  # noqa: ANN001
        seen.add(message.payload)
        if len(seen) == COUNT:
            done.set()

    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=protocol.owned_client_id("tenant-a", "ids-reader"), protocol=mqtt.MQTTv5)
    reader.username_pw_set(*broker.credentials("tenant-a"))
    reader.on_message = on_message
    reader.connect(broker.host, broker.port)
    reader.subscribe(topic, qos=0)
    reader.loop_start()

    writer = _FastClient(CallbackAPIVersion.VERSION2, client_id=protocol.owned_client_id("server", "ids-writer"), protocol=mqtt.MQTTv5)
    writer.username_pw_set(*broker.credentials("server"))
    writer.max_inflight_messages_set(1000)
    writer.max_queued_messages_set(0)
    try:
        writer.connect(broker.host, broker.port)
        writer.loop_start()
        deadline = time.monotonic() + 10
        while not writer.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        # Holding paho's message lock stalls PUBACK handling, so no packet id is freed meanwhile.
        with writer._out_message_mutex:
            refused = [i for i in range(COUNT)
                       if writer.publish(topic, str(i).encode(), qos=1).rc != MQTTErrorCode.MQTT_ERR_SUCCESS]
        assert refused == []
        assert done.wait(120), f"{len(seen)} of {COUNT} delivered"
    finally:
        writer.loop_stop()
        writer.disconnect()
        reader.loop_stop()
        reader.disconnect()
