"""The fixture broker as tests see it (address, users, topics) and server configs pointing at it.

tests/conftest.py builds these for the `broker` and `server_process` fixtures; a module of its
own so the conftest stays fixtures only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlserving_common import protocol
from mlserving_common.mosquitto import BrokerUser, LocalBroker, server_acl, tenant_acl, trainer_acl

TENANTS = ("tenant-a", "tenant-b")
#: Which demo model each test tenant is served by default.
TENANT_MODELS = {"tenant-a": "lstm", "tenant-b": "ann"}
#: A tenant with the original tutorial's fixed queue names.
LEGACY_TENANT = "legacy"
LEGACY_TOPICS = ("inqueue/lstm", "outqueue/lstm")


@dataclass
class BrokerHandle:
    """What tests need to know about the fixture broker: address, users, topics."""

    local: LocalBroker
    users: dict[str, BrokerUser]
    topics: dict[str, tuple[str, str]]  # tenant -> (request topic, response topic)
    prefix: str = protocol.DEFAULT_PREFIX

    @property
    def host(self) -> str:
        return self.local.host

    @property
    def port(self) -> int:
        return self.local.port

    def credentials(self, username: str) -> tuple[str, str]:
        return username, self.users[username].password

    def request_topic(self, tenant: str) -> str:
        return self.topics[tenant][0]

    def response_topic(self, tenant: str) -> str:
        return self.topics[tenant][1]

    def restart(self, down_seconds: float = 0.0) -> None:
        self.local.restart(down_seconds)


def make_broker_users(topics: dict[str, tuple[str, str]], prefix: str = protocol.DEFAULT_PREFIX) -> list[BrokerUser]:
    """Users for the given tenants plus `server` and `trainer`, with random passwords."""
    users = [BrokerUser(t, uuid.uuid4().hex, tenant_acl(*topics[t])) for t in topics]
    users.append(BrokerUser("server", uuid.uuid4().hex, server_acl(topics.values(), prefix=prefix), service=True))
    users.append(BrokerUser("trainer", uuid.uuid4().hex, trainer_acl(prefix), service=True))
    return users


def server_config(
    handle: BrokerHandle,
    registry: Path,
    http_port: int,
    tenants: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A server config (the chart's YAML shape) pointing at the fixture broker and registry."""
    if tenants is None:
        tenants = {tenant: {"models": {model: "current"}} for tenant, model in TENANT_MODELS.items()}
    config: dict[str, Any] = {
        "broker": {"host": handle.host, "port": handle.port, "username": "server", "keepalive": 10},
        "topic_prefix": handle.prefix,
        "share_group": protocol.DEFAULT_SHARE_GROUP,
        "qos": 1,
        "registry": {"path": str(registry), "poll_seconds": 0.2},
        "batching": {"max_batch": 64, "max_wait_ms": 2},
        "limits": {"max_payload_bytes": 262144, "max_instances": 1024, "max_pending": 20000},
        "http": {"host": "127.0.0.1", "port": http_port},
        "drain_seconds": 10,
        "log_level": "info",
        "tenants": tenants,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
