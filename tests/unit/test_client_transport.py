"""The one connection setup of the library and the load generator: session, window, TLS, reconnects."""

from __future__ import annotations

import pytest

from mlserving_client import transport
from mlserving_common import mqtt
from mlserving_common.mosquitto import TlsFiles


def test_connect_options_ask_for_a_clean_session_and_a_large_window() -> None:
    options = transport.connect_options("h", 1884, "tenant-a:mlc-1", "tenant-a", "pw", connect_timeout=3.0)
    assert (options.host, options.port, options.client_id) == ("h", 1884, "tenant-a:mlc-1")
    assert (options.username, options.password) == ("tenant-a", "pw")
    assert options.clean_start and options.session_expiry == 0
    assert options.receive_maximum == transport.RECEIVE_MAXIMUM == 65535
    assert options.connect_timeout == 3.0 and options.tls_context() is None


def test_the_library_reconnects_and_the_lean_load_engine_fails_fast() -> None:
    assert transport.connect_options("h", 1, "c", None, None).reconnect == mqtt.Backoff(0.1, 2.0)
    assert transport.connect_options("h", 1, "c", None, None, reconnect=False).reconnect is None


def test_tls_ca_turns_on_verified_tls(tls_files: TlsFiles) -> None:
    context = transport.connect_options("127.0.0.1", 8883, "c", "u", "p", tls_ca=str(tls_files.ca_file)).tls_context()
    assert context is not None and context.check_hostname


@pytest.mark.parametrize("qos", [0, 1])
def test_supported_qos(qos: int) -> None:
    transport.check_qos(qos)


@pytest.mark.parametrize("qos", [2, -1])
def test_unsupported_qos_names_the_field(qos: int) -> None:
    with pytest.raises(ValueError, match=r"^qos"):
        transport.check_qos(qos)


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#"])
def test_topic_level_check(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^tenant"):
        transport.check_topic_level(bad, "tenant")
