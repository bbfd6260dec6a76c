"""protocol.owned_client_id: the one place client ids are made (issue 13, finding 2)."""

from __future__ import annotations

import pytest

from mlserving_client import transport
from mlserving_common import protocol
from mlserving_training.config import ConfigError, TrainConfig


def test_ids_are_owned_by_the_username_and_unguessable():
    first, second = protocol.owned_client_id("tenant-a"), protocol.owned_client_id("tenant-a")
    assert first.startswith("tenant-a:") and second.startswith("tenant-a:") and first != second
    assert len(first.split(":", 1)[1]) >= 24  # 96 random bits
    assert protocol.owned_client_id("ml-trainer", "trainer-lstm") == "ml-trainer:trainer-lstm"
    client_id = transport.new_client_id("tenant-b")
    assert client_id.startswith("tenant-b:mlc-") and not any(c in client_id for c in "/+#")


@pytest.mark.parametrize("username", ["", "tenant:a"])
def test_a_username_that_cannot_own_ids_is_refused(username):
    with pytest.raises(ValueError, match="username"):
        protocol.owned_client_id(username)


def test_ids_stay_valid_topic_levels_and_broker_sized():
    with pytest.raises(ValueError):
        protocol.owned_client_id("tenant-a", "a/b")
    with pytest.raises(ValueError):
        protocol.owned_client_id("tenant-a", "x" * 64)


def test_the_trainers_session_id_is_stable_and_owned_by_its_login():
    config = TrainConfig(model="lstm", broker_username="ml-trainer")
    assert config.session_client_id == "ml-trainer:trainer-lstm"
    with pytest.raises(ConfigError, match=r"^client_id:"):
        TrainConfig(model="lstm", client_id="mlserving-trainer-lstm").validate()
