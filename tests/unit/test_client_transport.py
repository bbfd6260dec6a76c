"""The pre-packed PUBLISH properties must be byte-for-byte what paho's Properties would send."""

from __future__ import annotations

import pytest
from mlserving_client import leanmqtt, transport
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers


@pytest.mark.parametrize(
    "topic,correlation",
    [("ml/tenant-a/responses/mlc-0123456789ab", b"0f" * 16), ("t" * 300, b"c" * 200), ("ü/ñ", b""), ("x", b"\x00\xff")],
)
def test_packed_properties_match_paho(topic: str, correlation: bytes) -> None:
    reference = Properties(PacketTypes.PUBLISH)
    reference.ResponseTopic = topic
    reference.CorrelationData = correlation
    assert transport.publish_properties(topic, correlation).pack() == reference.pack()
    field = transport.response_topic_field(topic)
    assert transport.PublishProperties(topic, correlation, field).pack() == reference.pack()


def test_packed_properties_parse_back() -> None:
    packed = transport.publish_properties("ml/a/responses/c1", b"id-1").pack()
    parsed = Properties(PacketTypes.PUBLISH)
    parsed.unpack(packed)
    assert (parsed.ResponseTopic, parsed.CorrelationData) == ("ml/a/responses/c1", b"id-1")


def test_oversized_correlation_is_refused() -> None:
    with pytest.raises(ValueError, match="correlation"):
        transport.publish_properties("t", b"x" * 70000)


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#"])
def test_topic_level_check(bad: str) -> None:
    with pytest.raises(ValueError, match="^tenant"):
        transport.check_topic_level(bad, "tenant")


# -- leanmqtt, the load generator's minimal MQTT v5 client --------------------------------------


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, 268_435_455])
def test_varint_matches_paho(value: int) -> None:
    encoded = leanmqtt.varint(value)
    assert encoded == VariableByteIntegers.encode(value)
    assert leanmqtt._read_varint(encoded, 0) == (value, len(encoded))


def test_property_parser_reads_what_paho_packs() -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "ml/a/responses/c"
    props.CorrelationData = b"id-7"
    props.MessageExpiryInterval = 60
    props.UserProperty = [("k", "v")]
    packed = props.pack()
    length, pos = leanmqtt._read_varint(packed, 0)
    parsed = leanmqtt._properties(packed, pos, pos + length)
    assert parsed[8] == b"ml/a/responses/c" and parsed[9] == b"id-7" and parsed[2] == 60


def test_connect_packet_layout() -> None:
    pkt = leanmqtt.encode_connect("cid", "user", "pw", 30)
    assert pkt[0] == 0x10
    length, pos = leanmqtt._read_varint(pkt, 1)
    body = pkt[pos:]
    assert len(body) == length
    assert body[:7] == b"\x00\x04MQTT\x05" and body[7] == 0xC2  # user, password, clean start
    assert body.endswith(b"\x00\x03cid\x00\x04user\x00\x02pw")
