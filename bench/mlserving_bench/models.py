"""The model packages a run serves, and the raw model limit measured with LiteRT directly.

Packages come from the project's own training code (`build_demo_packages`), cached under
/var/cache/ml-serving/bench-models/<hash of the training sources>, so a first run trains
(about a minute) and later runs start at once; a change to the training code retrains.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlserving_common.devcache import cache_dir
from mlserving_common.package import MODEL_FILE, Metadata, verify_package
from mlserving_common.registry import FilesystemRegistry

CACHE_ROOT = cache_dir() / "bench-models"
MODELS = ("lstm", "ann")


def _training_sources_hash() -> str:
    """Changes whenever the code that produces the packages changes."""
    import mlserving_common
    import mlserving_training

    digest = hashlib.sha256()
    for package in (mlserving_training, mlserving_common):
        assert package.__file__ is not None  # a regular package, not a namespace one
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" not in path.parts:
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_registry(root: Path | None = None, emit: Callable[[str], None] = lambda line: None) -> Path:
    """A filesystem registry holding a current version of lstm and ann; trains them if needed."""
    if root is not None:
        registry = FilesystemRegistry(root)
        missing = [m for m in MODELS if registry.current(m) is None]
        if missing:
            raise FileNotFoundError(f"--registry {root}: no current version of {', '.join(missing)}")
        return Path(root)
    cache = CACHE_ROOT / _training_sources_hash()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run may be training the same models
        if not (cache / "DONE").exists():
            emit("training the demo models (first run with these training sources, ~1 min)")
            from mlserving_training.quick import build_demo_packages

            building = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_ROOT))
            try:
                build_demo_packages(building / "registry", models=MODELS)
                (building / "DONE").touch()
                shutil.rmtree(cache, ignore_errors=True)
                building.rename(cache)
            finally:
                shutil.rmtree(building, ignore_errors=True)
    return cache / "registry"


def package_dir(registry_root: Path, model: str) -> Path:
    """Directory of the version of `model` the registry calls current."""
    registry = FilesystemRegistry(registry_root)
    return registry.fetch(model, registry.current(model))


def package_window(registry_root: Path, model: str) -> int:
    """Readings per request window the current version of `model` expects."""
    return verify_package(package_dir(registry_root, model)).window


# ---------------------------------------------------------------------------------------------
# Raw model limit
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """Per-sample cost of one model at each batch size: set_tensor + invoke + get_tensor."""

    model: str
    version: str
    #: batch size -> best observed µs per call
    call_us: dict[int, float] = field(default_factory=dict)

    def per_sample_us(self, batch: int) -> float:
        return self.call_us[batch] / batch

    @property
    def best_batch(self) -> int:
        return min(self.call_us, key=self.per_sample_us)

    def per_sample_at(self, batch: float) -> float:
        """µs per sample for a (mean) batch size, from the smallest swept size that holds it.

        The server pads each batch to a power-of-two bucket, so that bucket's cost is what it pays.
        """
        sizes = sorted(self.call_us)
        for size in sizes:
            if size >= batch:
                return self.call_us[size] / max(batch, 1.0)
        return self.per_sample_us(sizes[-1])

    def to_dict(self) -> dict[str, Any]:
        best = self.best_batch
        return {
            "model": self.model,
            "version": self.version,
            "batch1_us": round(self.call_us[1], 3) if 1 in self.call_us else None,
            "best_batch": best,
            "best_us_per_sample": round(self.per_sample_us(best), 4),
            "call_us": {str(k): round(v, 3) for k, v in sorted(self.call_us.items())},
        }


def sweep_model(package: Path, sizes: Iterable[int], seconds_per_size: float, num_threads: int = 1) -> SweepResult:
    """Time LiteRT directly at each batch size; the best of several repeats (the machine is shared)."""
    from ai_edge_litert.interpreter import Interpreter

    metadata: Metadata = verify_package(package)
    model_bytes = (package / MODEL_FILE).read_bytes()
    result = SweepResult(metadata.name, metadata.version)
    dims = [int(d) for d in metadata.input.shape[1:]]
    rng = np.random.default_rng(7)
    for size in sizes:
        interpreter = Interpreter(model_content=model_bytes, num_threads=num_threads)
        inp = interpreter.get_input_details()[0]["index"]
        out = interpreter.get_output_details()[0]["index"]
        interpreter.resize_tensor_input(inp, [size, *dims])
        interpreter.allocate_tensors()
        sample = rng.standard_normal((size, *dims)).astype(np.float32)
        result.call_us[size] = _best_call_us(interpreter, inp, out, sample, seconds_per_size)
    return result


def _best_call_us(interpreter: Any, inp: int, out: int, sample: np.ndarray, budget: float) -> float:
    set_tensor, invoke, get_tensor = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor
    for _ in range(3):  # warm-up
        set_tensor(inp, sample)
        invoke()
        get_tensor(out)
    started = time.perf_counter()
    calls = 0
    while time.perf_counter() - started < budget / 10:  # calibrate: calls per 1/10 of the budget
        set_tensor(inp, sample)
        invoke()
        get_tensor(out)
        calls += 1
    best = float("inf")
    deadline = started + budget
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            set_tensor(inp, sample)
            invoke()
            get_tensor(out)
        best = min(best, (time.perf_counter_ns() - t0) / calls / 1000.0)
        if time.perf_counter() >= deadline:
            return best
