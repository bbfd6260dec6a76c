"""QoS 1 bookkeeping: the inflight window, FIFO behind it, packet ids reused only once free."""

from __future__ import annotations

import mqtt5
import pytest

from mlserving_common.mqtt import Delivery, MqttError, SubscribeAck
from mlserving_common.mqtt.outbox import Outbox


def _delivery(n: int) -> Delivery:
    return Delivery("t", 1, n, (str(n).encode(), False, None, b"c", None, None))


def _decoded(data: bytes) -> mqtt5.PublishPacket:
    packet, _ = mqtt5.read(memoryview(data))
    assert isinstance(packet, mqtt5.PublishPacket)
    return packet


def test_publishes_beyond_the_window_wait_in_order() -> None:
    outbox = Outbox(max_inflight=100)
    outbox.set_window(2)  # the broker's Receive Maximum is smaller
    sent = [outbox.add(_delivery(n), sending=True) for n in range(5)]
    assert [s is not None for s in sent] == [True, True, False, False, False]
    assert _decoded(sent[0]).payload == b"0" and _decoded(sent[0]).correlation_data == b"c"
    first = outbox.acked(1)
    assert first is not None and first.context == 0
    out: list[bytes] = []
    outbox.refill(out)
    assert [_decoded(d).payload for d in out] == [b"2"]
    assert len(outbox) == 4
    outbox.acked(2)
    outbox.acked(3)
    outbox.refill(out)
    assert [_decoded(d).payload for d in out] == [b"2", b"3", b"4"]


def test_nothing_is_sent_while_disconnected_and_order_is_kept() -> None:
    outbox = Outbox(max_inflight=10)
    assert outbox.add(_delivery(0), sending=False) is None
    assert outbox.add(_delivery(1), sending=True) is None  # behind the waiting one
    out: list[bytes] = []
    outbox.refill(out)
    assert [_decoded(d).payload for d in out] == [b"0", b"1"]


def test_resend_repeats_unacknowledged_publishes_with_dup_and_same_ids() -> None:
    outbox = Outbox(max_inflight=10)
    for n in range(3):
        outbox.add(_delivery(n), sending=True)
    outbox.acked(2)
    out: list[bytes] = []
    outbox.resend(out)
    assert [(p.packet_id, p.duplicate, p.payload) for p in map(_decoded, out)] == [(1, True, b"0"), (3, True, b"2")]


def test_packet_ids_wrap_and_skip_ids_still_in_use() -> None:
    outbox = Outbox(max_inflight=65535)
    keep = outbox.add(_delivery(0), sending=True)  # id 1, never acknowledged here
    assert keep is not None
    outbox.acks[2] = SubscribeAck(["f"], 2)  # a SUBSCRIBE awaiting its SUBACK holds id 2
    ids = []
    for n in range(70_000):
        delivery = _delivery(n)
        outbox.add(delivery, sending=True)
        ids.append(delivery.packet_id)
        outbox.acked(delivery.packet_id)  # type: ignore[arg-type]
    assert 1 not in ids and 2 not in ids
    assert ids[:2] == [3, 4] and max(ids) == 65535
    wrap = ids.index(65535)
    assert ids[wrap + 1] == 3


def test_no_free_packet_id_is_an_error_not_a_reuse() -> None:
    outbox = Outbox(max_inflight=65535)
    for n in range(65535):
        outbox.add(_delivery(n), sending=True)
    with pytest.raises(MqttError):
        outbox.next_id()


def test_drain_hands_back_everything_once() -> None:
    outbox = Outbox(max_inflight=1)
    outbox.add(_delivery(0), sending=True)
    outbox.add(_delivery(1), sending=True)
    assert [d.context for d in outbox.drain()] == [0, 1]
    assert len(outbox) == 0 and outbox.drain() == []
