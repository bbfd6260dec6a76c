"""LiteRT runtime on the real demo models: buckets, batching, normalisation, refusal of bad packages."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mlserving_common.package import PackageError
from mlserving_server.runtime import ModelRuntime, buckets_for


def test_buckets_are_powers_of_two_up_to_max_batch():
    assert buckets_for(1) == [1]
    assert buckets_for(64) == [1, 2, 4, 8, 16, 32, 64]
    assert buckets_for(48) == [1, 2, 4, 8, 16, 32, 48]


@pytest.mark.parametrize("model", ["lstm", "ann"])
def test_batched_predictions_equal_single_ones_for_any_size(model_registry, model):
    runtime = ModelRuntime(model_registry.packages[model], max_batch=16)
    rng = np.random.default_rng(1)
    mean, std = runtime.metadata.normalization.mean, runtime.metadata.normalization.std
    windows = (mean + std * rng.standard_normal((37, runtime.window))).astype(np.float32)  # > max_batch: chunked
    batched = runtime.predict(windows)
    singles = np.vstack([runtime.predict(windows[i : i + 1]) for i in range(len(windows))])
    assert batched.shape == (37, runtime.output_size)
    np.testing.assert_allclose(batched, singles, rtol=1e-4, atol=1e-4)
    assert np.isfinite(batched).all()


def test_checksum_mismatch_is_refused(model_registry, tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(model_registry.packages["ann"], package)
    data = bytearray((package / "model.tflite").read_bytes())
    data[-10] ^= 0xFF
    (package / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="sha256"):
        ModelRuntime(package, max_batch=4)
