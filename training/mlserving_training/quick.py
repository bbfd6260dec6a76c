"""Small, fast, deterministic demo packages for server tests, the demo and image builds.

    from mlserving_training.quick import build_demo_packages
    paths = build_demo_packages(Path("/tmp/registry"))   # {"lstm": .../lstm/v1, "ann": .../ann/v1}

Callers are expected to cache the registry directory it fills.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from mlserving_common.registry import FilesystemRegistry
from mlserving_training import data as data_mod
from mlserving_training.config import TrainConfig
from mlserving_training.generate import generate_bts
from mlserving_training.pipeline import train

DEMO_STATIONS = 1
DEMO_DAYS = 60
DEMO_EPOCHS = 8
DEMO_SEED = 7


def demo_config(model: str, epochs: int = DEMO_EPOCHS, seed: int = DEMO_SEED) -> TrainConfig:
    """Settings that train in seconds yet still beat the naive forecast on generated data."""
    return TrainConfig(
        model=model, epochs=epochs, seed=seed, batch_size=32, learning_rate=3e-3, patience=3,
        synthetic_stations=DEMO_STATIONS, synthetic_days=DEMO_DAYS,
    ).validate()


def build_demo_packages(
    out_root: Path,
    models: Iterable[str] = ("lstm", "ann"),
    epochs: int = DEMO_EPOCHS,
    seed: int = DEMO_SEED,
    emit: Callable[[str], None] = lambda line: None,
) -> dict[str, Path]:
    """Train each model briefly on generated data and publish it as v1, promoted to current.

    Models that already have a version in `out_root` are left as they are (their current
    version is returned), so calling this on a cached registry is cheap and changes nothing.
    Returns {model name: package directory inside the registry}.
    """
    registry = FilesystemRegistry(out_root)
    frame = generate_bts(stations=DEMO_STATIONS, days=DEMO_DAYS, seed=seed)
    raw = data_mod.from_frame(frame, f"synthetic:stations={DEMO_STATIONS},days={DEMO_DAYS},seed={seed}")
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="mlserving-demo-") as scratch:
        for model in models:
            if registry.versions(model):
                paths[model] = registry.fetch(model, registry.current(model) or registry.versions(model)[-1])
                continue
            config = demo_config(model, epochs, seed)
            config.out = str(Path(scratch) / model)
            config.plot = "none"
            result = train(config, emit, raw)
            version = registry.publish(result.package_dir, promote=True)
            paths[model] = registry.fetch(model, version)
    return paths
