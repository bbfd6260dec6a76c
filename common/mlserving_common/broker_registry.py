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

Memory: a replica serves one or two versions of a model, while the broker may hold dozens. The
mirror keeps only an index (version -> digest of its payload) and the pointers; a version's
payload is fetched when asked for, by subscribing to its topic alone (the broker re-sends the
retained message), unpacked into the cache directory and dropped from memory.

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

from mlserving_common import mqtt, protocol
from mlserving_common.package import (
    METADATA_FILE,
    MODEL_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    Metadata,
    verify_package,
)
from mlserving_common.registry import (
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
            raise RegistryError(
                f"registry {location!r}: put the password in a file (?password_file=...), not in the URL"
            )
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
        files = ((MODEL_FILE, (package_dir / MODEL_FILE).read_bytes()), (METADATA_FILE, metadata.to_json().encode()))
        for name, data in files:
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
    """The `Registry` Protocol over retained MQTT messages: a live index kept by one subscription,
    packages fetched on demand (see the module docstring)."""

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
        #: Guards the mirror below; notified on every message, which is what fetches wait for.
        self._changed = threading.Condition()
        self._digests: dict[str, dict[str, str]] = {}  # model -> version -> sha256 of its retained payload
        self._pointers: dict[str, dict[str, Any] | str] = {}  # str: why the retained pointer is unreadable
        self._fetching: dict[tuple[str, str], bytes | None] = {}  # the one payload being fetched, once it came
        self._fetch_lock = threading.Lock()  # one payload in memory at a time
        #: Payloads that did not unpack, by digest: not fetched again until the version's message changes.
        self._broken: dict[tuple[str, str], tuple[str, str]] = {}
        self._last_message = time.monotonic()
        self._subscribed = threading.Event()
        self._refused: str | None = None  # why the broker refused the login or the subscription
        self._sync_seen: set[str] = set()
        self._synced = False
        self._connection = mqtt.Connection(
            self._options(client_id or protocol.owned_client_id(location.username or "mlserving"), password),
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )

    def __repr__(self) -> str:
        loc = self.location
        return f"BrokerRegistry({'mqtts' if loc.tls else 'mqtt'}://{loc.host}:{loc.port}/{loc.prefix})"

    # -- connection ------------------------------------------------------------------------

    def _options(self, client_id: str, password: str | None) -> mqtt.ConnectOptions:
        loc = self.location
        if loc.username and password is None and loc.password_file:
            try:
                password = Path(loc.password_file).read_text().strip("\r\n")
            except OSError as exc:
                raise RegistryError(f"registry password_file {loc.password_file}: {exc.strerror}") from None
        return mqtt.ConnectOptions(
            loc.host,
            loc.port,
            client_id=client_id,
            username=loc.username,
            password=password if loc.username else None,
            # The system's CAs unless the location names one, as for any TLS client.
            ssl_context=ssl.create_default_context(cafile=loc.ca_file) if loc.tls else None,
            keepalive=30,
            reconnect=mqtt.Backoff(1, 10),
        )

    def connect(self) -> BrokerRegistry:
        """Connect, subscribe and wait until the retained backlog has arrived; idempotent."""
        if self._synced:
            return self
        loc = self.location
        try:
            self._connection.start()
        except mqtt.MqttError as exc:  # closed, e.g. by an earlier failed connect: it stays closed
            raise RegistryError(f"{self!r}: {exc}") from None
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
        self._connection.close()

    def _on_connect(self, ack: mqtt.ConnAck) -> None:
        # Every (re)connect starts clean: the broker re-sends all retained messages.
        self._connection.subscribe(
            protocol.registry_topic("+", "+", self.location.prefix), qos=1, on_done=self._on_subscribed
        )

    def _on_disconnect(self, error: mqtt.MqttError) -> None:
        if isinstance(error, mqtt.ConnectRefused) and not self._subscribed.is_set():
            self._refused = _reason("connack", error.reason_code)  # e.g. a bad password: retrying will not help

    def _on_subscribed(self, ack: mqtt.SubscribeAck) -> None:
        if ack.error is not None:  # the connection dropped first; the next connect subscribes again
            return
        failed = [_reason("suback", code) for code in ack.reason_codes or [] if code >= mqtt.REFUSED]
        if failed:
            self._refused = f"subscription to the registry topics: {', '.join(failed)}"
        else:
            self._subscribed.set()

    def _on_message(self, message: mqtt.Message) -> None:
        parts = message.topic.split("/")
        if len(parts) < 3:
            return
        model, leaf = parts[-2], parts[-1]
        payload = message.payload
        is_version = NAME_PATTERN.match(model) is not None and VERSION_PATTERN.match(leaf) is not None
        digest = hashlib.sha256(payload).hexdigest() if is_version and payload else None
        with self._changed:
            self._last_message = time.monotonic()
            if model == _SYNC_MODEL:
                self._sync_seen.add(leaf)
            elif NAME_PATTERN.match(model) and leaf == "current":
                self._pointers[model] = _parse_pointer(payload)
            elif is_version:
                if digest is not None:
                    self._digests.setdefault(model, {})[leaf] = digest
                else:  # an empty retained message deletes it
                    self._digests.get(model, {}).pop(leaf, None)
                if (model, leaf) in self._fetching:
                    self._fetching[(model, leaf)] = payload
            self._changed.notify_all()

    def _send(self, topic: str, payload: bytes, retain: bool, deadline: float) -> str | None:
        """Publish at QoS 1 and wait for the PUBACK: None if the broker accepted it, else why not."""
        try:
            delivery = self._connection.publish(topic, payload, qos=1, retain=retain)
            delivery.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return "no PUBACK before the timeout"
        except mqtt.MqttError as exc:
            return str(exc)
        return _reason("puback", delivery.reason_code or 0) if delivery.refused else None

    def _wait_for_backlog(self) -> None:
        """Retained messages arrive right after the SUBACK; know when the last one is in.

        A writer publishes a marker to itself: messages reach one client in order, so once the
        marker is back, the backlog is complete. A read-only user cannot, so it waits for a quiet gap.
        """
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout
        if self._send(protocol.registry_topic(_SYNC_MODEL, token, self.location.prefix), b"", False, deadline) is None:
            with self._changed:
                if self._changed.wait_for(lambda: token in self._sync_seen, max(0.0, deadline - time.monotonic())):
                    self._sync_seen.discard(token)
                    return
            raise RegistryError(f"{self!r}: the registry backlog did not arrive within {self.timeout:.0f}s")
        while time.monotonic() < deadline:
            with self._changed:
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

    def _download(self, model: str, version: str) -> bytes:
        """The retained payload of one version, asked for again by subscribing to its topic alone."""
        key = (model, version)
        topic = protocol.registry_topic(model, version, self.location.prefix)
        deadline = time.monotonic() + self.timeout
        with self._fetch_lock:
            with self._changed:
                self._fetching[key] = None
            try:
                codes = self._connection.subscribe(topic, qos=1).wait(self.timeout)
                if any(code >= mqtt.REFUSED for code in codes):
                    raise RegistryError(f"{self!r}: subscription to {topic}: {_reason('suback', max(codes))}")
                with self._changed:
                    arrived = self._changed.wait_for(
                        lambda: self._fetching[key] is not None, max(0.0, deadline - time.monotonic())
                    )
                    payload = self._fetching[key]
                if not arrived:
                    raise RegistryError(f"{self!r}: {topic} did not arrive within {self.timeout:.0f}s")
            except (mqtt.MqttError, TimeoutError) as exc:
                raise RegistryError(f"{self!r}: fetching {topic}: {exc}") from None
            finally:
                with self._changed:
                    self._fetching.pop(key, None)
                try:
                    self._connection.unsubscribe(topic)  # no need to wait: a late copy is just ignored
                except mqtt.MqttError:
                    pass  # disconnected: the subscription went with the session
        if not payload:  # deleted since the index named it
            raise RegistryError(f"model {model!r} has no version {version!r} in {self!r}")
        return payload

    # -- readers ---------------------------------------------------------------------------

    def _known(self, model: str) -> bool:
        with self._changed:
            return bool(self._digests.get(model)) or model in self._pointers

    def _state(self, model: str) -> dict[str, Any]:
        with self._changed:
            pointer = self._pointers.get(model, {})
        if isinstance(pointer, str):
            raise RegistryError(f"{self!r}: pointer of {model!r}: {pointer}")
        return pointer

    def models(self) -> list[str]:
        self.connect()
        with self._changed:
            names = {m for m, versions in self._digests.items() if versions}
        if self.seed is not None:
            names.update(self.seed.models())
        return sorted(names)

    def versions(self, model: str) -> list[str]:
        self.connect()
        if not self._known(model):
            return self.seed.versions(model) if self.seed is not None else []
        with self._changed:
            found = [v for v in self._digests.get(model, {}) if v != "v0"]
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
        """A local directory holding the package: unpacked once into the cache, named by content
        hash, so only the first fetch of a version transfers it."""
        self.connect()
        if not self._known(model) and self.seed is not None:
            return self.seed.fetch(model, version)
        if version is None:
            version = self.current(model)
            if version is None:
                raise RegistryError(f"model {model!r} has no current version (promote one first)")
        version_number(version)
        with self._changed:
            digest = self._digests.get(model, {}).get(version)
        if digest is None:
            raise RegistryError(f"model {model!r} has no version {version!r} in {self!r}")
        target = self._cache_dir(model, version, digest)
        if target.is_dir():
            return target
        broken = self._broken.get((model, version))
        if broken is not None and broken[0] == digest:
            raise RegistryError(broken[1])
        payload = self._download(model, version)
        digest = hashlib.sha256(payload).hexdigest()  # the message may have changed since the index saw it
        target = self._cache_dir(model, version, digest)
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
            try:
                unpack(payload, staging)
                os.chmod(staging, 0o755)
                os.replace(staging, target)
            except RegistryError as exc:
                self._broken[(model, version)] = (digest, str(exc))
                raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def _cache_dir(self, model: str, version: str, digest: str) -> Path:
        return self._cache / model / f"{version}-{digest[:16]}"

    # -- writers ---------------------------------------------------------------------------

    def publish(self, package_dir: Path, promote: bool = False) -> str:
        package_dir = Path(package_dir)
        metadata = verify_for_publish(package_dir)
        model = metadata.name
        self._adopt_seed(model)
        version = next_version(self.versions(model))
        published = replace(metadata, version=version)
        published.validate()
        self._publish_version(model, version, pack(package_dir, published))
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

    def _publish_version(self, model: str, version: str, payload: bytes) -> None:
        """Retain one version; the index learns it at once (our own copy of the message comes later)."""
        self._publish_retained(protocol.registry_topic(model, version, self.location.prefix), payload)
        with self._changed:
            self._digests.setdefault(model, {})[version] = hashlib.sha256(payload).hexdigest()

    def _move_pointer(self, model: str, version: str, action: str, history: list[str] | None = None) -> None:
        previous = self._state(model)
        if history is None:
            history = [*previous.get("history", []), version]
        state = pointer_state(previous, version, history, action)
        self._publish_retained(protocol.registry_current_topic(model, self.location.prefix), json.dumps(state).encode())
        with self._changed:
            self._pointers[model] = state

    def _adopt_seed(self, model: str) -> None:
        """Before the first write for a model, copy the seed's versions and pointer to the broker."""
        self.connect()
        if self.seed is None or self._known(model) or not self.seed.versions(model):
            return
        for version in self.seed.versions(model):
            path = self.seed.fetch(model, version)
            self._publish_version(model, version, pack(path, verify_package(path)))
        current = self.seed.current(model)
        if current is not None:
            self._move_pointer(model, current, "seed", history=self.seed.history(model) or [current])


def _reason(kind: str, code: int) -> str:
    """`Bad user name or password (0x86)`: the broker's reason, worded for the error message."""
    number, _, name = mqtt.reason_name(kind, code).partition(" ")
    return f"{name.capitalize()} ({number})"


def _parse_pointer(payload: bytes) -> dict[str, Any] | str:
    try:
        state = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(state, dict) or not isinstance(state.get("version"), str):
        return "must be a JSON object with a string 'version'"
    return state
