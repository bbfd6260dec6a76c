"""The broker-backed registry against a real Mosquitto (users and ACLs as the chart renders them)
and a real server process: seeding from baked packages, publish/promote/rollback, read-only
servers, hot swaps without a restart, refused packages, retained state across a broker restart,
and a replica's memory staying flat however many versions the broker holds.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from mlserving_common import protocol
from mlserving_common.broker_registry import BrokerLocation, BrokerRegistry
from mlserving_common.mosquitto import BrokerUser, LocalBroker, trainer_acl
from mlserving_common.package import verify_package
from mlserving_common.registries import open_registry
from mlserving_common.registry import FilesystemRegistry, Registry, RegistryError

from model_support import make_package
from mqtt_support import connect_as

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]
TRAIN_CLI = [sys.executable, "-c", "import sys; from mlserving_training.cli import main; sys.exit(main())"]


def registry_as(broker, user: str, tmp_path: Path, seed: Path | None = None) -> BrokerRegistry:
    location = BrokerLocation(
        host=broker.host, port=broker.port, prefix=broker.prefix, username=user, cache=str(tmp_path / f"cache-{user}")
    )
    return BrokerRegistry(
        location, seed=FilesystemRegistry(seed) if seed else None, password=broker.users[user].password, timeout=10
    ).connect()


@pytest.fixture
def registries(broker, tmp_path):
    opened: list[BrokerRegistry] = []

    def open_(user: str, seed: Path | None = None) -> BrokerRegistry:
        opened.append(registry_as(broker, user, tmp_path, seed))
        return opened[-1]

    yield open_
    for registry in opened:
        registry.close()


def test_first_publish_seeds_then_numbers_after_the_baked_versions(registries, registry_root, model_registry):
    trainer = registries("trainer", seed=registry_root)
    assert isinstance(trainer, Registry)
    # Nothing on the broker yet: reads fall through to the baked packages.
    assert trainer.versions("lstm") == ["v1"] and trainer.current("lstm") == "v1"
    assert trainer.publish(model_registry.packages["lstm"], promote=True) == "v2"

    reader = registries("server")  # another client, read-only, no seed: only what the broker holds
    assert reader.versions("lstm") == ["v1", "v2"]
    assert reader.current("lstm") == "v2" and reader.history("lstm") == ["v1", "v2"]
    assert verify_package(reader.fetch("lstm", "v2")).version == "v2"
    baked = verify_package(registry_root / "lstm" / "v1")
    assert verify_package(reader.fetch("lstm", "v1")).model_sha256 == baked.model_sha256
    assert reader.versions("ann") == []  # never written: not copied

    assert trainer.rollback("lstm") == "v1"
    assert registries("server").current("lstm") == "v1"  # a fresh reader sees the retained pointer
    with pytest.raises(RegistryError, match="has no previously promoted version"):
        trainer.rollback("lstm")


def test_a_read_only_user_cannot_write(registries, model_registry):
    server = registries("server")
    with pytest.raises(RegistryError, match="did not take"):
        server.publish(model_registry.packages["ann"])
    assert server.versions("ann") == []


def test_server_swaps_to_a_version_published_on_the_broker(
    server_process, registries, registry_root, model_registry, mqtt_client, until, tmp_path, broker
):
    settings = {"kind": "broker", "cache_dir": str(tmp_path / "server-cache")}
    server = server_process(registry_root, registry_settings=settings)
    client = mqtt_client("tenant-a")
    assert client.request({"series": SERIES})["version"] == "v1"  # the seed, before any publish

    trainer = registries("trainer", seed=registry_root)
    assert trainer.publish(model_registry.packages["lstm"], promote=True) == "v2"
    until(lambda: client.request({"series": SERIES})["version"] == "v2", timeout=20)
    assert server.proc.poll() is None  # swapped in place, no restart

    # What a broken writer could leave: a v3 that is not a package, promoted. Refused; v2 keeps serving.
    broken = {"version": "v3", "history": ["v1", "v2", "v3"]}
    raw_publish(broker, protocol.registry_topic("lstm", "v3", broker.prefix), b"garbage")
    raw_publish(broker, protocol.registry_current_topic("lstm", broker.prefix), json.dumps(broken).encode())
    until(lambda: "not a valid tar" in server.log(), timeout=20)
    assert client.request({"series": SERIES})["version"] == "v2"
    assert server.proc.poll() is None


def raw_publish(broker, topic: str, payload: bytes) -> None:
    """A retained QoS 1 message from the trainer user, bypassing the registry's checks."""
    client = connect_as(broker, "trainer")
    try:
        client.publish(topic, payload, qos=1, retain=True)
    finally:
        client.close()


@contextmanager
def persistent_broker(tmp_path: Path) -> Iterator[tuple[LocalBroker, BrokerLocation, str]]:
    """A broker of our own that keeps retained messages across restarts, with only the trainer
    user: the broker, the trainer's registry location on it and its password."""
    user = BrokerUser("trainer", uuid.uuid4().hex, trainer_acl(), service=True)
    with LocalBroker([user], workdir=tmp_path / "mosquitto", persistence=True) as local:
        yield (
            local,
            BrokerLocation(
                host=local.host,
                port=local.port,
                prefix=protocol.DEFAULT_PREFIX,
                username="trainer",
                cache=str(tmp_path / "cache"),
            ),
            user.password,
        )


def test_retained_packages_survive_a_broker_restart_with_persistence(tmp_path, registry_root, model_registry):
    with persistent_broker(tmp_path) as (local, location, password):
        writer = BrokerRegistry(location, seed=FilesystemRegistry(registry_root), password=password).connect()
        assert writer.publish(model_registry.packages["ann"], promote=True) == "v2"
        writer.close()
        local.restart()
        reader = BrokerRegistry(location, password=password).connect()
        try:
            assert reader.versions("ann") == ["v1", "v2"] and reader.current("ann") == "v2"
            verify_package(reader.fetch("ann"))
        finally:
            reader.close()


def test_a_connected_reader_follows_the_broker_through_a_restart(tmp_path, until):
    with (
        persistent_broker(tmp_path) as (local, location, password),
        closing(BrokerRegistry(location, password=password).connect()) as reader,
    ):
        with closing(BrokerRegistry(location, password=password).connect()) as writer:
            writer.publish(make_package(tmp_path / "one", "ann", b"one"), promote=True)
        local.restart(down_seconds=1.0)
        with closing(BrokerRegistry(location, password=password).connect()) as writer:
            writer.publish(make_package(tmp_path / "two", "ann", b"two"), promote=True)
        until(lambda: reader.current("ann") == "v2", timeout=30)  # subscribed again on reconnect
        assert verify_package(reader.fetch("ann", "v1")).version == "v1"


def test_mqtts_verifies_the_broker_against_the_ca_file(broker, tls_files, tmp_path):
    location = BrokerLocation(
        host="127.0.0.1",
        port=broker.local.tls_port,
        prefix=broker.prefix,
        username="trainer",
        tls=True,
        ca_file=str(tls_files.ca_file),
        cache=str(tmp_path / "cache"),
    )
    with closing(open_registry(location, password=broker.users["trainer"].password)) as registry:
        assert registry.publish(make_package(tmp_path / "package", "ann"), promote=True) == "v1"
        assert verify_package(registry.fetch("ann")).version == "v1"


def test_trainer_cli_publishes_promotes_and_lists_through_the_broker(broker, registry_root, model_registry, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(broker.users["trainer"].password + "\n")
    url = (
        f"mqtt://trainer@{broker.host}:{broker.port}/{broker.prefix}"
        f"?password_file={password_file}&seed={registry_root}&cache={tmp_path / 'cache'}"
    )

    def train_cli(*args: str) -> str:
        done = subprocess.run([*TRAIN_CLI, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "published ann v2 to mqtt:" in train_cli("publish", str(model_registry.packages["ann"]), "--registry", url)
    listing = train_cli("list", "--registry", url, "ann")
    assert "ann: current v1" in listing and " v2 " in listing  # seeded v1 stays current until promoted
    train_cli("promote", "--registry", url, "ann", "v2")
    assert "ann: current v2" in train_cli("list", "--registry", url, "ann")
    bad = url.replace("password_file", "pasword_file")
    done = subprocess.run([*TRAIN_CLI, "list", "--registry", bad], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown parameter(s) ['pasword_file']" in done.stderr


def test_a_refused_login_fails_fast_with_the_reason(broker, tmp_path):
    location = BrokerLocation(
        host=broker.host, port=broker.port, prefix=broker.prefix, username="trainer", cache=str(tmp_path)
    )
    registry = BrokerRegistry(location, password="wrong", timeout=30)
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"as trainer: refused: (Bad user name or password|Not authorized)"):
        registry.connect()
    assert time.monotonic() - started < 10  # not the 30 s timeout: retrying cannot help


def test_memory_stays_bounded_while_many_versions_are_published(registries, until, tmp_path):
    """A replica keeps the index of what the broker holds, not the packages: its memory does not
    grow with the versions published, and a version is still there when asked for."""
    size, count = 200 * 1024, 24  # each below the broker's message_size_limit
    packages = [make_package(tmp_path / f"package-{i}", "ann", os.urandom(size)) for i in range(count)]
    writer, reader = registries("trainer"), registries("server")
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for package in packages:
            writer.publish(package, promote=True)
        wanted = [f"v{i + 1}" for i in range(count)]
        until(lambda: reader.versions("ann") == wanted and reader.current("ann") == wanted[-1], timeout=60)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Both clients mirroring every package, as they once did, would be 2 x 24 x 200 KiB = 9.4 MiB.
    assert grown < 4 * size, f"{grown} bytes more after {count} versions of {size} bytes"
    assert verify_package(reader.fetch("ann", "v3")).version == "v3"
    assert verify_package(reader.fetch("ann")).version == wanted[-1]
