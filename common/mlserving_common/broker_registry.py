"""Model registry kept on the MQTT broker as retained messages, for clusters without shared storage.

Every serving replica on every node already talks to the broker, so the broker can hold the
packages too: no ReadWriteMany volume, no object store. Topics (the wire contract,
docs/protocol.md), all retained, QoS 1:

    <prefix>/_registry/<model>/<version>   the package: a tar of model.tflite + metadata.json
    <prefix>/_registry/<model>/current     {"version": ..., "history": [...], "events": [...]}

The pointer has the same shape as the filesystem registry's current.json. A version message is
never replaced (versions are immutable), so a reader that saw the pointer name vN can always
fetch vN. Writers must be one per model at a time (the retraining CronJob's concurrencyPolicy
Forbid): MQTT has no compare-and-set, so two concurrent publishers could pick the same vN.

Seed: the images bake v1 of the default models at /models. Until the broker holds anything for a
model, reads fall through to that read-only `seed` registry; the first write for the model copies
the seed's versions and pointer to the broker, so version names never collide with baked ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import ssl
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from mlserving_common import protocol
from mlserving_common.package import (
    METADATA_FILE,
    MODEL_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    Metadata,
    verify_package,
)
from mlserving_common.registry import (
    FilesystemRegistry,
    Registry,
    RegistryError,
    next_version,
    pointer_state,
    verify_for_publish,
    version_number,
)

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_CACHE = "/var/cache/ml-serving/registry"
#: Readers that may not publish learn that the retained backlog is complete when nothing came for this long.
QUIET_SECONDS = 0.5
_SYNC_MODEL = "_sync"  # not a valid model name: writers' sync markers, never stored


@dataclass(frozen=True)
class BrokerLocation:
    """Where a broker registry lives and how to log in: parsed from one location string.

    ``mqtt[s]://[user@]host[:port]/prefix[?password_file=F&ca_file=F&seed=DIR&cache=DIR]``;
    a password only ever comes from a file (a URL ends up in logs and `ps`).
    """

    host: str
    port: int
    prefix: str
    username: str | None = None
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    seed: str | None = None
    cache: str = DEFAULT_CACHE

    @classmethod
    def parse(cls, location: str) -> BrokerLocation:
        url = urlsplit(location)
        if url.scheme not in SCHEMES:
            raise RegistryError(f"registry {location!r}: scheme must be one of {sorted(SCHEMES)}")
        if url.password is not None:
            raise RegistryError(f"registry {location!r}: put the password in a file (?password_file=...), not in the URL")
        if not url.hostname:
            raise RegistryError(f"registry {location!r}: no broker host")
        prefix = url.path.strip("/")
        if not prefix or url.fragment or "+" in prefix or location.endswith("#"):
            raise RegistryError(f"registry {location!r}: the path must be the topic prefix, e.g. mqtt://broker:1883/ml")
        query = {key: values[-1] for key, values in parse_qs(url.query, strict_parsing=bool(url.query)).items()}
        unknown = sorted(set(query) - {"password_file", "ca_file", "seed", "cache"})
        if unknown:
            raise RegistryError(f"registry {location!r}: unknown parameter(s) {unknown}")
        try:
            port = url.port or SCHEMES[url.scheme]
        except ValueError:
            raise RegistryError(f"registry {location!r}: bad port") from None
        return cls(
            host=url.hostname,
            port=port,
            prefix=prefix,
            username=unquote(url.username) if url.username else None,
            password_file=query.get("password_file"),
            tls=url.scheme == "mqtts",
            ca_file=query.get("ca_file"),
            seed=query.get("seed"),
            cache=query.get("cache", DEFAULT_CACHE),
        )


def pack(package_dir: Path, metadata: Metadata) -> bytes:
    """The retained payload of one version: an uncompressed tar (TFLite files hardly compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MODEL_FILE, (package_dir / MODEL_FILE).read_bytes()), (METADATA_FILE, metadata.to_json().encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(payload: bytes, target: Path) -> None:
    """Write exactly the two package files; anything else in the archive (links, paths) is refused."""
    wanted = {MODEL_FILE, METADATA_FILE}
    found: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
            for member in tar:
                if member.name not in wanted or not member.isfile() or member.name in found:
                    raise RegistryError(f"package archive holds {member.name!r}; only {sorted(wanted)} are allowed")
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                (target / member.name).write_bytes(source.read())
                found.add(member.name)
    except tarfile.TarError as exc:
        raise RegistryError(f"package archive is not a valid tar ({exc})") from None
    if found != wanted:
        raise RegistryError(f"package archive lacks {sorted(wanted - found)}")


class BrokerRegistry:
    """The `Registry` Protocol over retained MQTT messages; a live mirror kept by one subscription."""

    def __init__(
        self,
        location: BrokerLocation,
        seed: Registry | None = None,
        password: str | None = None,
        client_id: str = "",
        timeout: float = 30.0,
    ) -> None:
        """`password` overrides location.password_file (the server passes the one it already resolved)."""
        self.location = location
        self.seed = seed
        self.timeout = timeout
        self._cache = Path(location.cache)
        self._lock = threading.Lock()
        self._packages: dict[str, dict[str, bytes]] = {}
        self._pointers: dict[str, dict[str, Any] | str] = {}  # str: why the retained pointer is unreadable
        self._last_message = time.monotonic()
        self._subscribed = threading.Event()
        self._refused: str | None = None  # why the broker refused the login or the subscription
        self._sync_seen: set[str] = set()
        self._pubacks: dict[int, ReasonCode] = {}
        self._synced = False
        self._client = self._make_client(client_id or protocol.owned_client_id(location.username or "mlserving"), password)

    def __repr__(self) -> str:
        loc = self.location
        return f"BrokerRegistry({'mqtts' if loc.tls else 'mqtt'}://{loc.host}:{loc.port}/{loc.prefix})"

    # -- connection ------------------------------------------------------------------------

    def _make_client(self, client_id: str, password: str | None) -> mqtt.Client:
        loc = self.location
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if loc.username:
            if password is None and loc.password_file:
                try:
                    password = Path(loc.password_file).read_text().strip("\r\n")
                except OSError as exc:
                    raise RegistryError(f"registry password_file {loc.password_file}: {exc.strerror}") from None
            client.username_pw_set(loc.username, password)
        if loc.tls:
            client.tls_set(ca_certs=loc.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def connect(self) -> BrokerRegistry:
        """Connect, subscribe and wait until the retained backlog has arrived; idempotent."""
        if self._synced:
            return self
        loc = self.location
        self._client.connect_async(loc.host, loc.port, keepalive=30)
        self._client.loop_start()
        deadline = time.monotonic() + self.timeout
        while not self._subscribed.wait(0.05):
            if self._refused or time.monotonic() > deadline:
                self.close()
                why = f"refused: {self._refused}" if self._refused else f"no subscription within {self.timeout:.0f}s"
                raise RegistryError(f"{self!r} as {loc.username or 'anonymous'}: {why}")
        self._wait_for_backlog()
        self._synced = True
        return self

    def close(self) -> None:
        if self._client.is_connected():
            self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)  # e.g. "Bad user name or password": retrying will not help
            return
        # Every (re)connect starts clean: the broker re-sends all retained messages.
        client.subscribe(protocol.registry_topic("+", "+", self.location.prefix), qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._refused = f"subscription to the registry topics: {', '.join(failed)}"
        else:
            self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) < 3:
            return
        model, leaf = parts[-2], parts[-1]
        with self._lock:
            self._last_message = time.monotonic()
            if model == _SYNC_MODEL:
                self._sync_seen.add(leaf)
            elif NAME_PATTERN.match(model) and leaf == "current":
                self._pointers[model] = _parse_pointer(message.payload)
            elif NAME_PATTERN.match(model) and VERSION_PATTERN.match(leaf):
                if message.payload:
                    self._packages.setdefault(model, {})[leaf] = bytes(message.payload)
                else:  # an empty retained message deletes it
                    self._packages.get(model, {}).pop(leaf, None)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        with self._lock:
            self._pubacks[mid] = reason

    def _send(self, topic: str, payload: bytes, retain: bool, deadline: float) -> str | None:
        """Publish at QoS 1 and wait for the PUBACK: None if the broker accepted it, else why not."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return mqtt.error_string(info.rc)
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        if not info.is_published():
            return "no PUBACK before the timeout"
        with self._lock:
            reason = self._pubacks.pop(info.mid, None)
        return str(reason) if reason is not None and reason.is_failure else None

    def _wait_for_backlog(self) -> None:
        """Retained messages arrive right after the SUBACK; know when the last one is in.

        A writer publishes a marker to itself: messages reach one client in order, so once the
        marker is back, the backlog is complete. A read-only user cannot, so it waits for a quiet gap.
        """
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout
        if self._send(protocol.registry_topic(_SYNC_MODEL, token, self.location.prefix), b"", False, deadline) is None:
            while time.monotonic() < deadline:
                with self._lock:
                    if token in self._sync_seen:
                        self._sync_seen.discard(token)
                        return
                time.sleep(0.01)
            raise RegistryError(f"{self!r}: the registry backlog did not arrive within {self.timeout:.0f}s")
        while time.monotonic() < deadline:
            with self._lock:
                quiet = time.monotonic() - self._last_message
            if quiet >= QUIET_SECONDS:
                return
            time.sleep(0.05)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        refused = self._send(topic, payload, True, time.monotonic() + self.timeout)
        if refused is not None:
            raise RegistryError(
                f"{self!r}: the broker did not take {topic} ({len(payload)} bytes): {refused}"
                " (a read-only user? larger than the broker's message_size_limit?)"
            )

    # -- readers ---------------------------------------------------------------------------

    def _known(self, model: str) -> bool:
        with self._lock:
            return bool(self._packages.get(model)) or model in self._pointers

    def _state(self, model: str) -> dict[str, Any]:
        with self._lock:
            pointer = self._pointers.get(model, {})
        if isinstance(pointer, str):
            raise RegistryError(f"{self!r}: pointer of {model!r}: {pointer}")
        return pointer

    def models(self) -> list[str]:
        self.connect()
        with self._lock:
            names = {m for m, versions in self._packages.items() if versions}
        if self.seed is not None:
            names.update(self.seed.models())
        return sorted(names)

    def versions(self, model: str) -> list[str]:
        self.connect()
        if not self._known(model):
            return self.seed.versions(model) if self.seed is not None else []
        with self._lock:
            found = [v for v in self._packages.get(model, {}) if v != "v0"]
        return sorted(found, key=version_number)

    def current(self, model: str) -> str | None:
        self.connect()
        if not self._known(model):
            return self.seed.current(model) if self.seed is not None else None
        return self._state(model).get("version")

    def history(self, model: str) -> list[str]:
        self.connect()
        if not self._known(model):
            return self.seed.history(model) if self.seed is not None else []
        return list(self._state(model).get("history", []))

    def fetch(self, model: str, version: str | None = None) -> Path:
        """A local directory holding the package (unpacked once into the cache, by content hash)."""
        self.connect()
        if not self._known(model) and self.seed is not None:
            return self.seed.fetch(model, version)
        if version is None:
            version = self.current(model)
            if version is None:
                raise RegistryError(f"model {model!r} has no current version (promote one first)")
        version_number(version)
        with self._lock:
            payload = self._packages.get(model, {}).get(version)
        if payload is None:
            raise RegistryError(f"model {model!r} has no version {version!r} in {self!r}")
        target = self._cache / model / f"{version}-{hashlib.sha256(payload).hexdigest()[:16]}"
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
            try:
                unpack(payload, staging)
                os.chmod(staging, 0o755)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return target

    # -- writers ---------------------------------------------------------------------------

    def publish(self, package_dir: Path, promote: bool = False) -> str:
        package_dir = Path(package_dir)
        metadata = verify_for_publish(package_dir)
        model = metadata.name
        self._adopt_seed(model)
        version = next_version(self.versions(model))
        published = replace(metadata, version=version)
        published.validate()
        payload = pack(package_dir, published)
        self._publish_retained(protocol.registry_topic(model, version, self.location.prefix), payload)
        with self._lock:
            self._packages.setdefault(model, {})[version] = payload
        if promote:
            self._move_pointer(model, version, "promote")
        return version

    def promote(self, model: str, version: str) -> None:
        self._adopt_seed(model)
        self.fetch(model, version)
        if self.current(model) != version:
            self._move_pointer(model, version, "promote")

    def rollback(self, model: str) -> str:
        self._adopt_seed(model)
        if not self.versions(model):
            raise RegistryError(f"model {model!r} has no published versions")
        history = self.history(model)
        if len(history) < 2:
            raise RegistryError(f"model {model!r} has no previously promoted version to roll back to")
        target = history[-2]
        self.fetch(model, target)
        self._move_pointer(model, target, "rollback", history=history[:-1])
        return target

    def _move_pointer(self, model: str, version: str, action: str, history: list[str] | None = None) -> None:
        previous = self._state(model)
        if history is None:
            history = list(previous.get("history", [])) + [version]
        state = pointer_state(previous, version, history, action)
        self._publish_retained(protocol.registry_current_topic(model, self.location.prefix), json.dumps(state).encode())
        with self._lock:
            self._pointers[model] = state

    def _adopt_seed(self, model: str) -> None:
        """Before the first write for a model, copy the seed's versions and pointer to the broker."""
        self.connect()
        if self.seed is None or self._known(model) or not self.seed.versions(model):
            return
        for version in self.seed.versions(model):
            path = self.seed.fetch(model, version)
            payload = pack(path, verify_package(path))
            self._publish_retained(protocol.registry_topic(model, version, self.location.prefix), payload)
            with self._lock:
                self._packages.setdefault(model, {})[version] = payload
        current = self.seed.current(model)
        if current is not None:
            self._move_pointer(model, current, "seed", history=self.seed.history(model) or [current])


def _parse_pointer(payload: bytes) -> dict[str, Any] | str:
    try:
        state = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(state, dict) or not isinstance(state.get("version"), str):
        return "must be a JSON object with a string 'version'"
    return state


def open_broker_registry(location: str, client_id: str = "") -> BrokerRegistry:
    """A connected broker registry for a mqtt[s]:// location, with its seed if the location names one."""
    parsed = BrokerLocation.parse(location)
    seed = FilesystemRegistry(parsed.seed) if parsed.seed else None
    return BrokerRegistry(parsed, seed=seed, client_id=client_id).connect()
