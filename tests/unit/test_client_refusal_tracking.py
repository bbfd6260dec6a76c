"""A broker's refusal of a request's PUBLISH is reported with its PUBACK reason code, by number and name.

Which request a PUBACK belongs to needs no bookkeeping of ours any more: the connection layer
hands each PUBACK back with the Delivery of its publish, which carries the request
(tests/integration/test_client_broker_refusals.py checks the whole path against the broker).
"""

from __future__ import annotations

from mlserving_client import transport


def test_refusal_message_names_the_reason_code() -> None:
    assert "0x87 (Not authorized)" in transport.refusal_message(0x87)
    assert "0x33" in transport.refusal_message(0x33)
