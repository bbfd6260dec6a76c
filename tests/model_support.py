"""Packages for tests: v1 of the demo models, trained once by our own training code and cached
across test runs, and packages of arbitrary bytes for what never runs a model (registries).

The `model_registry` fixture (tests/conftest.py) is `demo_registry()`; a module of its own so the
conftest stays fixtures only.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from mlserving_common.devcache import cache_dir
from mlserving_common.package import Metadata, Normalization, TensorSpec, write_package

REPO = Path(__file__).resolve().parents[1]
CACHE_ROOT = cache_dir() / "test-models"


@dataclass
class ModelRegistry:
    """A filesystem registry with v1 of each demo model; treat as read-only (use registry_root)."""

    root: Path
    packages: dict[str, Path]


def make_package(where: Path, name: str = "lstm", payload: bytes = b"model", size: int = 0) -> Path:
    """A valid package whose model.tflite is `payload` plus `size` zero bytes: registries check
    checksums and metadata, they never parse a .tflite, so no TensorFlow is needed."""
    model = payload + b"\0" * size
    metadata = Metadata(
        name=name,
        version="v0",
        created_at="2026-01-01T00:00:00Z",
        window=6,
        normalization=Normalization(0.0, 1.0),
        input=TensorSpec([-1, 6]),
        output=TensorSpec([-1, 1]),
        model_sha256=hashlib.sha256(model).hexdigest(),
    )
    write_package(where, model, metadata)
    return where


def _sources_hash() -> str:
    """Changes whenever the code that produces the test models changes."""
    digest = hashlib.sha256()
    roots = [REPO / "training" / "mlserving_training", REPO / "common" / "mlserving_common"]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            skipped = "__pycache__" in path.parts or "mqtt" in path.parts
            if skipped or path.name in ("mosquitto.py", "protocol.py", "logs.py"):
                continue
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build_demo_registry(out_root: Path) -> dict[str, Path]:
    """Train and publish v1 of each demo model with the project's own training code."""
    from mlserving_training.quick import build_demo_packages

    return {name: Path(path) for name, path in build_demo_packages(out_root).items()}


def _prune_cache(keep: Path, max_age_seconds: float = 86400.0) -> None:
    """Drop model caches of older training sources (not touched for a day) so the cache stays small."""
    now = time.time()
    for entry in CACHE_ROOT.iterdir():
        if entry == keep or not entry.is_dir():
            continue
        try:
            if now - entry.stat().st_mtime > max_age_seconds:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            pass


def demo_registry() -> ModelRegistry:
    """The cached registry for the current training sources, built first if there is none."""
    cache = CACHE_ROOT / _sources_hash()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest run may be building the same models
        if not (cache / "DONE").exists():
            building = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_ROOT))
            try:
                packages = _build_demo_registry(building / "registry")
                (building / "packages.json").write_bytes(
                    orjson.dumps({k: str(Path(v).relative_to(building / "registry")) for k, v in packages.items()})
                )
                (building / "DONE").write_text("")
                shutil.rmtree(cache, ignore_errors=True)
                building.rename(cache)
            finally:
                shutil.rmtree(building, ignore_errors=True)
        _prune_cache(keep=cache)
    relative = orjson.loads((cache / "packages.json").read_bytes())
    root = cache / "registry"
    return ModelRegistry(root, {name: root / rel for name, rel in relative.items()})
