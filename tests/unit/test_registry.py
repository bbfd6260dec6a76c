"""FilesystemRegistry: versions, promote/rollback, and atomicity under crashes and concurrent readers.

Packages here hold arbitrary model bytes: the registry checks checksums and metadata, it never
parses a .tflite, so no TensorFlow is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mlserving_common import registry as registry_mod
from mlserving_common.package import (
    METADATA_FILE,
    MODEL_FILE,
    PackageError,
    verify_package,
)
from mlserving_common.registries import open_registry
from mlserving_common.registry import FilesystemRegistry, Registry, RegistryError

from model_support import make_package


@pytest.fixture
def registry(tmp_path: Path) -> FilesystemRegistry:
    return FilesystemRegistry(tmp_path / "registry")


def visible_entries(reg: FilesystemRegistry, model: str) -> set[str]:
    return {p.name for p in (reg.root / model).iterdir() if not p.name.startswith(".")}


def test_filesystem_registry_implements_the_protocol(registry: FilesystemRegistry) -> None:
    assert isinstance(registry, Registry)
    assert isinstance(open_registry(registry.root), FilesystemRegistry)
    assert open_registry(f"file://{registry.root}").root == registry.root
    with pytest.raises(RegistryError, match="scheme 's3' is not supported"):
        open_registry("s3://bucket/models")
    with pytest.raises(RegistryError, match="topic prefix"):  # mqtt:// goes to the broker backend
        open_registry("mqtt://broker:1883")


def test_empty_registry(registry: FilesystemRegistry) -> None:
    assert registry.models() == [] and registry.versions("lstm") == [] and registry.current("lstm") is None
    with pytest.raises(RegistryError, match="no current version"):
        registry.fetch("lstm")
    with pytest.raises(RegistryError, match="no published versions"):
        registry.rollback("lstm")


def test_publish_assigns_versions_and_rewrites_metadata(registry: FilesystemRegistry, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg")
    old_umask = os.umask(0o077)  # a strict umask must not make the registry private
    try:
        assert registry.publish(pkg) == "v1"
        assert registry.current("lstm") is None  # publishing alone does not promote
        assert registry.publish(pkg) == "v2"
        registry.promote("lstm", "v1")
    finally:
        os.umask(old_umask)
    assert registry.versions("lstm") == ["v1", "v2"] and registry.models() == ["lstm"]
    meta = verify_package(registry.fetch("lstm", "v2"))
    assert meta.version == "v2"
    assert registry.show("lstm", "v1").version == "v1"
    # The source package is untouched: it stays v0 (unpublished).
    assert json.loads((pkg / METADATA_FILE).read_text())["version"] == "v0"
    # Readers may run as another user (the server image): everything they read is world-readable.
    for directory in (registry.root, registry.root / "lstm"):
        assert (directory.stat().st_mode & 0o777) == 0o755
    assert (registry.fetch("lstm", "v2").stat().st_mode & 0o777) == 0o755
    assert (registry.fetch("lstm", "v2").joinpath(MODEL_FILE).stat().st_mode & 0o777) == 0o644
    assert ((registry.root / "lstm" / "current.json").stat().st_mode & 0o777) == 0o644


def test_versions_sort_numerically(registry: FilesystemRegistry, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg")
    for _ in range(11):
        registry.publish(pkg)
    assert registry.versions("lstm")[-3:] == ["v9", "v10", "v11"]
    assert registry.publish(pkg) == "v12"


def test_publish_refuses_a_broken_package(registry: FilesystemRegistry, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg")
    (pkg / MODEL_FILE).write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        registry.publish(pkg)
    assert registry.versions("lstm") == []


def test_models_are_kept_apart(registry: FilesystemRegistry, tmp_path: Path) -> None:
    registry.publish(make_package(tmp_path / "a", "lstm"), promote=True)
    registry.publish(make_package(tmp_path / "b", "ann"), promote=True)
    registry.publish(make_package(tmp_path / "b", "ann"))
    assert registry.models() == ["ann", "lstm"]
    assert registry.versions("ann") == ["v1", "v2"] and registry.versions("lstm") == ["v1"]


def test_promote_and_rollback_walk_the_promotion_history(registry: FilesystemRegistry, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg")
    assert registry.publish(pkg, promote=True) == "v1"
    assert registry.current("lstm") == "v1" and registry.fetch("lstm") == registry.fetch("lstm", "v1")
    for _ in range(2):
        registry.publish(pkg)
    registry.promote("lstm", "v3")
    registry.promote("lstm", "v2")
    registry.promote("lstm", "v2")  # promoting the current version again changes nothing
    assert registry.history("lstm") == ["v1", "v3", "v2"]
    assert registry.rollback("lstm") == "v3" and registry.current("lstm") == "v3"
    assert registry.rollback("lstm") == "v1" and registry.current("lstm") == "v1"
    with pytest.raises(RegistryError, match="no previously promoted"):
        registry.rollback("lstm")
    assert registry.current("lstm") == "v1"
    assert [e["action"] for e in registry.events("lstm")] == ["promote"] * 3 + ["rollback"] * 2


def test_promote_refuses_unknown_versions(registry: FilesystemRegistry, tmp_path: Path) -> None:
    registry.publish(make_package(tmp_path / "pkg"), promote=True)
    for bad in ("v7", "v0", "latest"):
        with pytest.raises(RegistryError):
            registry.promote("lstm", bad)
    assert registry.current("lstm") == "v1"
    with pytest.raises(RegistryError, match="model name"):
        registry.versions("../escape")


def test_an_exception_mid_copy_leaves_nothing_visible(
    registry: FilesystemRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = make_package(tmp_path / "pkg", size=1 << 16)
    registry.publish(pkg, promote=True)

    def failing_write(target: Path, data: bytes) -> None:
        target.write_bytes(data[: len(data) // 2])
        raise OSError("disk full (injected)")

    monkeypatch.setattr(registry_mod, "_write_file_durably", failing_write)
    with pytest.raises(OSError, match="injected"):
        registry.publish(pkg, promote=True)
    assert registry.versions("lstm") == ["v1"] and registry.current("lstm") == "v1"
    assert visible_entries(registry, "lstm") == {"v1", "current.json"}
    assert list((registry.root / ".staging").iterdir()) == []
    monkeypatch.undo()
    assert registry.publish(pkg) == "v2"


CRASHING_PUBLISHER = """
import sys, time
from pathlib import Path
from mlserving_common import registry as r

real_copy = r._copy_file_durably

def slow_copy(source, target):
    # Copy half, tell the test we are mid-publish, then wait to be killed.
    data = Path(source).read_bytes()
    with open(target, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
    print("MID-PUBLISH", flush=True)
    time.sleep(60)

r._copy_file_durably = slow_copy
r.FilesystemRegistry(sys.argv[1]).publish(Path(sys.argv[2]), promote=True)
"""


def test_a_publisher_killed_mid_publish_leaves_no_partial_version(registry: FilesystemRegistry, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg", size=1 << 20)
    registry.publish(pkg, promote=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_PUBLISHER, str(registry.root), str(pkg)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "MID-PUBLISH"
        staged = list((registry.root / ".staging").iterdir())
        assert len(staged) == 1  # the half-written package exists, but only in staging
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert registry.versions("lstm") == ["v1"] and registry.current("lstm") == "v1"
    assert visible_entries(registry, "lstm") == {"v1", "current.json"}
    verify_package(registry.fetch("lstm"))
    # The killed writer's lock died with it; the next publish cleans its leftovers.
    assert registry.publish(pkg) == "v2"
    assert list((registry.root / ".staging").iterdir()) == []


CHURNING_WRITER = """
import sys
from pathlib import Path
from mlserving_common.registry import FilesystemRegistry
reg = FilesystemRegistry(sys.argv[1])
for i in range(int(sys.argv[3])):
    version = reg.publish(Path(sys.argv[2]), promote=(i % 2 == 0))
    if i % 3 == 2:
        reg.rollback("lstm")
    elif i % 2 == 1:
        reg.promote("lstm", version)
print("DONE", flush=True)
"""


def test_readers_during_publish_and_promote_always_see_complete_packages(
    registry: FilesystemRegistry, tmp_path: Path
) -> None:
    pkg = make_package(tmp_path / "pkg", size=256 << 10)
    registry.publish(pkg, promote=True)
    writer = subprocess.Popen(
        [sys.executable, "-c", CHURNING_WRITER, str(registry.root), str(pkg), "40"], stdout=subprocess.PIPE, text=True
    )
    failures: list[str] = []
    checks = [0]
    stop = threading.Event()

    def reader() -> None:
        reader_registry = FilesystemRegistry(registry.root)
        while not stop.is_set():
            try:
                current = reader_registry.current("lstm")
                assert current is not None
                assert verify_package(reader_registry.fetch("lstm", current)).version == current
                for version in reader_registry.versions("lstm"):
                    verify_package(reader_registry.fetch("lstm", version))
                checks[0] += 1
            except (AssertionError, PackageError, RegistryError, OSError) as exc:
                failures.append(repr(exc))

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        out, _ = writer.communicate(timeout=300)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert writer.returncode == 0 and "DONE" in out
    assert failures == []
    assert checks[0] > 0
    assert registry.versions("lstm") == [f"v{i}" for i in range(1, 42)]


def test_concurrent_publishers_never_reuse_a_version(registry: FilesystemRegistry, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg")
    script = (
        "import sys; from pathlib import Path; from mlserving_common.registry import FilesystemRegistry as R\n"
        "reg = R(sys.argv[1])\nprint(' '.join(reg.publish(Path(sys.argv[2])) for _ in range(10)))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(registry.root), str(pkg)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    assigned = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        assigned += out.split()
    assert sorted(assigned, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 31)]
    assert registry.versions("lstm") == [f"v{i}" for i in range(1, 31)]
