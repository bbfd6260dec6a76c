"""Small, fast, deterministic demo packages for server tests, the demo and image builds.

    from mlserving_training.quick import build_demo_packages
    paths = build_demo_packages(Path("/tmp/registry"))   # {"lstm": .../lstm/v1, "ann": .../ann/v1}

Callers are expected to cache the registry directory it fills. Each package is promoted through
the quality gate of every other door (`publish --promote`); its settings require beating the
naive forecast and the serving version only (`gate_baselines: naive`, on record in metadata.gate):
a 6-reading network does not beat the weekly linear AR on this data, and these packages are there
to exercise the server with the tutorial's two models. `make demo` serves only models that beat
every baseline (client/mlserving_client/demo.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from mlserving_common.registry import FilesystemRegistry
from mlserving_training import data as data_mod
from mlserving_training.config import TrainConfig
from mlserving_training.gate import GateRefused
from mlserving_training.generate import generate_bts
from mlserving_training.pipeline import train
from mlserving_training.retrain import publish_promote_gated

DEMO_STATIONS = 1
DEMO_DAYS = 60
DEMO_EPOCHS = 8
DEMO_SEED = 7


def demo_config(model: str, epochs: int = DEMO_EPOCHS, seed: int = DEMO_SEED, margin: float = 0.0) -> TrainConfig:
    """Settings that train in seconds yet still beat the naive forecast on generated data."""
    return TrainConfig(
        model=model,
        epochs=epochs,
        seed=seed,
        batch_size=32,
        learning_rate=3e-3,
        patience=3,
        synthetic_stations=DEMO_STATIONS,
        synthetic_days=DEMO_DAYS,
        gate_baselines="naive",
        gate_margin=margin,
    ).validate()


def build_demo_packages(
    out_root: Path,
    models: Iterable[str] = ("lstm", "ann"),
    epochs: int = DEMO_EPOCHS,
    seed: int = DEMO_SEED,
    emit: Callable[[str], None] = lambda line: None,
    margin: float = 0.0,
    force: bool = False,
) -> dict[str, Path]:
    """Train each model briefly on generated data and publish it as v1, promoted to current if it
    passes the gate by `margin`; refused, it raises GateRefused, unless `force` (promoted on record).

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
            config = demo_config(model, epochs, seed, margin)
            config.out = str(Path(scratch) / model)
            config.plot = "none"
            result = train(config, emit, raw)
            version = publish_promote_gated(result.package_dir, str(out_root), force=force, emit=emit)
            if version is None:
                raise GateRefused(
                    f"demo package {model}: refused by the quality gate (see the gate line);"
                    " nothing published (--force promotes it anyway, on record)"
                )
            paths[model] = registry.fetch(model, version)
    return paths
