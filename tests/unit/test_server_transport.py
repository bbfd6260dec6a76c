"""The server's paho fast paths must agree byte for byte with paho's own encoder and decoder."""

from __future__ import annotations

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mlserving_server.transport import PackedProperties, _decode_publish

PROPERTY_SETS = [
    {},
    {"ResponseTopic": "ml/tenant-a/responses/client-1", "CorrelationData": b"\x00\x01corr"},
    {
        "ResponseTopic": "outqueue/lstm/ü",
        "CorrelationData": b"x" * 300,
        "UserProperty": [("k", "v"), ("trace", "abc")],
        "ContentType": "application/json",
        "MessageExpiryInterval": 30,
        "PayloadFormatIndicator": 1,
    },
]


def _publish_body(topic: bytes, mid: int, qos: int, properties: Properties | None, payload: bytes) -> bytes:
    """The PUBLISH variable header + payload exactly as paho encodes them."""
    packed = properties.pack() if properties is not None else b"\x00"
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    return body + bytes(packed) + payload


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("props", PROPERTY_SETS)
def test_publish_decoder_matches_paho(qos, props):
    properties = None
    if props:
        properties = Properties(PacketTypes.PUBLISH)
        for name, value in props.items():
            setattr(properties, name, value)
    payload = b'{"id": "1", "series": [1, 2, 3, 4, 5, 6]}'
    body = bytearray(_publish_body(b"ml/tenant-a/requests", 4242, qos, properties, payload))
    header = 0x30 | (qos << 1)
    reference = _packet.decode_publish(header, body, MQTTProtocolVersion.MQTTv5)
    topic, mid, got_payload, response_topic, correlation = _decode_publish(body, qos)
    assert topic == reference.topic.decode()
    assert mid == reference.mid
    assert got_payload == reference.payload
    assert response_topic == getattr(reference.properties, "ResponseTopic", None)
    assert correlation == getattr(reference.properties, "CorrelationData", None)


def test_publish_decoder_leaves_topic_aliases_to_paho():
    properties = Properties(PacketTypes.PUBLISH)
    properties.TopicAlias = 3
    body = bytearray(_publish_body(b"ml/t/requests", 1, 1, properties, b"{}"))
    assert _decode_publish(body, 1) is None


@pytest.mark.parametrize("body", [b"\x00", b"\x00\x05ab", b"\x00\x02ab\x00\x01\x05\x09\x00"])
def test_truncated_packets_are_refused_not_misread(body):
    try:
        assert _decode_publish(bytearray(body), 1) is None
    except (IndexError, ValueError):
        pass  # the caller hands these to paho, which reports the malformed packet


@pytest.mark.parametrize("correlation", [b"", b"x", b"\x00" * 127, b"y" * 128, b"z" * 20000])
def test_packed_correlation_property_matches_paho(correlation):
    properties = Properties(PacketTypes.PUBLISH)
    properties.CorrelationData = correlation
    assert PackedProperties(correlation).pack() == bytes(properties.pack())
