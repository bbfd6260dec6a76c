"""Model registries: where published packages live and which version of each model serves.

The layout and rules are documented in docs/model-package.md. `Registry` is the interface
the trainer, server and CLI program against; `FilesystemRegistry` is the backend for a local
directory or a PVC, `broker_registry.BrokerRegistry` the one for clusters without shared storage.
Both build on this module, never the other way round; `registries.open_registry` opens either.

Filesystem layout::

    <root>/<model>/<version>/model.tflite     immutable once visible
    <root>/<model>/<version>/metadata.json
    <root>/<model>/current.json               {"version": ..., "history": [...], "events": [...]}
    <root>/<model>/.lock                      writers serialise on it (flock)
    <root>/.staging/                          half-written packages; never read

Readers take no lock: a version directory appears by one rename(2) of a complete, fsynced
directory, and current.json is replaced by one rename(2) of a complete, fsynced file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mlserving_common.package import (
    METADATA_FILE,
    MODEL_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    Metadata,
    PackageError,
    read_metadata,
    verify_package,
)

CURRENT_FILE = "current.json"
LOCK_FILE = ".lock"
STAGING_DIR = ".staging"
#: Promotion/rollback events kept in current.json for `show`; older ones are dropped.
MAX_EVENTS = 200


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says which model/version and why."""


@runtime_checkable
class Registry(Protocol):
    """What every registry backend offers. Versions are strings v1, v2, ... assigned on publish."""

    def publish(self, package_dir: Path, promote: bool = False) -> str:
        """Store a verified package under the next version of its model; return that version."""

    def models(self) -> list[str]:
        """Names of models with at least one published version, sorted."""

    def versions(self, model: str) -> list[str]:
        """Published versions of `model`, oldest first."""

    def current(self, model: str) -> str | None:
        """Version that should serve, or None if none was promoted yet."""

    def history(self, model: str) -> list[str]:
        """Promotion stack, oldest first; its last entry is current."""

    def promote(self, model: str, version: str) -> None:
        """Make `version` current, remembering the previous one for rollback."""

    def rollback(self, model: str) -> str:
        """Make the previously promoted version current again; return it."""

    def fetch(self, model: str, version: str | None = None) -> Path:
        """Local directory holding the package (current if version is None)."""

    def close(self) -> None:
        """Release what the backend holds open (the broker registry's MQTT connection); idempotent."""


def version_number(version: str) -> int:
    if not VERSION_PATTERN.match(version):
        raise RegistryError(f"version {version!r} must look like v1, v2, ...")
    return int(version[1:])


def verify_for_publish(package_dir: Path) -> Metadata:
    """The package's metadata if it may be published; what every backend checks first."""
    try:
        return verify_package(package_dir)
    except PackageError as exc:
        raise RegistryError(f"refusing to publish {package_dir}: {exc}") from None


def next_version(existing: list[str]) -> str:
    """The version after the newest of `existing` (sorted oldest first): v1 for none."""
    return f"v{version_number(existing[-1]) + 1 if existing else 1}"


def pointer_state(previous: dict[str, Any], version: str, history: list[str], action: str) -> dict[str, Any]:
    """The next `current` pointer (current.json, or the broker's retained pointer): one event more."""
    event = {
        "action": action,
        "version": version,
        "from": previous.get("version"),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    events = [*previous.get("events", []), event][-MAX_EVENTS:]
    return {"version": version, "history": history, "events": events}


def _fsync_path(path: Path) -> None:
    """fsync a file or directory so a rename that follows cannot expose unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Published files are world-readable whatever the writer's umask: servers may run as other users.
FILE_MODE = 0o644
DIR_MODE = 0o755


def _make_dir(path: Path) -> None:
    """Create a directory readable by all (not subject to the writer's umask) if it is missing."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)


def _copy_file_durably(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fchmod(dst.fileno(), FILE_MODE)
        os.fsync(dst.fileno())


def _write_file_durably(target: Path, data: bytes) -> None:
    with target.open("wb") as dst:
        dst.write(data)
        dst.flush()
        os.fchmod(dst.fileno(), FILE_MODE)
        os.fsync(dst.fileno())


class FilesystemRegistry:
    """Registry in a directory tree; safe for concurrent readers and for writers on one host.

    Writers (publish, promote, rollback) serialise on a per-model flock, which the kernel
    releases if the writer dies, so a crash never leaves the registry locked.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FilesystemRegistry({str(self.root)!r})"

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # -- readers ---------------------------------------------------------------------------

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if NAME_PATTERN.match(entry.name) and entry.is_dir() and self.versions(entry.name)
        )

    def versions(self, model: str) -> list[str]:
        model_dir = self._model_dir(model)
        if not model_dir.is_dir():
            return []
        found = [
            entry.name
            for entry in model_dir.iterdir()
            if VERSION_PATTERN.match(entry.name) and entry.name != "v0" and entry.is_dir()
        ]
        return sorted(found, key=version_number)

    def current(self, model: str) -> str | None:
        return self._read_state(model).get("version")

    def history(self, model: str) -> list[str]:
        return list(self._read_state(model).get("history", []))

    def events(self, model: str) -> list[dict[str, Any]]:
        """Promotion and rollback events, oldest first (bounded to MAX_EVENTS)."""
        return list(self._read_state(model).get("events", []))

    def fetch(self, model: str, version: str | None = None) -> Path:
        if version is None:
            version = self.current(model)
            if version is None:
                raise RegistryError(f"model {model!r} has no current version (promote one first)")
        version_number(version)
        path = self._model_dir(model) / version
        if not path.is_dir():
            raise RegistryError(f"model {model!r} has no version {version!r}")
        return path

    def show(self, model: str, version: str | None = None) -> Metadata:
        """Metadata of a published version (current if None)."""
        return read_metadata(self.fetch(model, version))

    # -- writers ---------------------------------------------------------------------------

    def publish(self, package_dir: Path, promote: bool = False) -> str:
        package_dir = Path(package_dir)
        metadata = verify_for_publish(package_dir)
        model = metadata.name
        model_dir = self._model_dir(model)
        staging_root = self.root / STAGING_DIR
        _make_dir(self.root)
        _make_dir(staging_root)
        _make_dir(model_dir)
        with self._locked(model):
            self._remove_stale_staging(model)
            staging = Path(tempfile.mkdtemp(prefix=f"{model}.", dir=staging_root))
            os.chmod(staging, DIR_MODE)  # mkdtemp makes it owner-only
            try:
                version = next_version(self.versions(model))
                published = replace(metadata, version=version)
                published.validate()
                _copy_file_durably(package_dir / MODEL_FILE, staging / MODEL_FILE)
                _write_file_durably(staging / METADATA_FILE, published.to_json().encode())
                _fsync_path(staging)
                # Re-check what we are about to expose: a corrupted copy must never become visible.
                verify_package(staging)
                os.rename(staging, model_dir / version)
                _fsync_path(model_dir)
                _fsync_path(staging_root)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if promote:
                self._promote_locked(model, version, action="promote")
        return version

    def promote(self, model: str, version: str) -> None:
        self.fetch(model, version)
        with self._locked(model):
            self._promote_locked(model, version, action="promote")

    def rollback(self, model: str) -> str:
        if not self.versions(model):
            raise RegistryError(f"model {model!r} has no published versions")
        with self._locked(model):
            state = self._read_state(model)
            history: list[str] = list(state.get("history", []))
            if len(history) < 2:
                raise RegistryError(f"model {model!r} has no previously promoted version to roll back to")
            history.pop()
            target = history[-1]
            self.fetch(model, target)
            self._write_state(model, target, history, state, action="rollback")
        return target

    # -- internals -------------------------------------------------------------------------

    def _model_dir(self, model: str) -> Path:
        if not NAME_PATTERN.match(model):
            raise RegistryError(f"model name {model!r} must match {NAME_PATTERN.pattern}")
        return self.root / model

    @contextlib.contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        model_dir = self._model_dir(model)
        _make_dir(model_dir)
        fd = os.open(model_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _remove_stale_staging(self, model: str) -> None:
        """Leftovers of writers that died mid-publish; safe because we hold the model's lock."""
        staging_root = self.root / STAGING_DIR
        for entry in staging_root.glob(f"{model}.*"):
            shutil.rmtree(entry, ignore_errors=True)

    def _read_state(self, model: str) -> dict[str, Any]:
        path = self._model_dir(model) / CURRENT_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(state, dict):
            raise RegistryError(f"{path}: must hold a JSON object")
        return state

    def _promote_locked(self, model: str, version: str, action: str) -> None:
        state = self._read_state(model)
        history = list(state.get("history", []))
        if history and history[-1] == version:
            return
        history.append(version)
        self._write_state(model, version, history, state, action=action)

    def _write_state(self, model: str, version: str, history: list[str], previous: dict[str, Any], action: str) -> None:
        model_dir = self._model_dir(model)
        body = json.dumps(pointer_state(previous, version, history, action), indent=2).encode()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{CURRENT_FILE}.", dir=model_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fchmod(handle.fileno(), FILE_MODE)
                os.fsync(handle.fileno())
            os.replace(tmp, model_dir / CURRENT_FILE)
            _fsync_path(model_dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
