"""PubackTracker: a PUBACK is matched to its request whichever comes first, the ack or publish()'s mid."""

from __future__ import annotations

from mlserving_client import transport


def test_ack_after_the_mid_is_known_returns_the_request() -> None:
    tracker: transport.PubackTracker[str] = transport.PubackTracker()
    assert tracker.sent(7, "req-7") is None
    assert tracker.acked(7, 0x87) == "req-7"
    assert len(tracker) == 0


def test_ack_before_publish_returned_is_kept_for_sent() -> None:
    """paho may call on_publish before publish() hands the mid back: the code waits for sent()."""
    tracker: transport.PubackTracker[str] = transport.PubackTracker()
    assert tracker.acked(9, 0x87) is None
    assert tracker.sent(9, "req-9") == 0x87
    assert tracker.acked(9, 0) is None and tracker.sent(9, "req-9b") == 0  # a reused mid starts afresh
    assert len(tracker) == 0


def test_refusal_message_names_the_reason_code() -> None:
    assert "0x87 (Not authorized)" in transport.refusal_message(0x87)
    assert "0x33" in transport.refusal_message(0x33)
