"""TFLite export and the parity gate, on small untrained models (TensorFlow needed, hence slow)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["ann", "lstm"])
def test_export_uses_builtin_ops_with_a_resizable_batch_and_matches_keras(kind: str) -> None:
    from mlserving_training.export import check_parity, to_tflite
    from mlserving_training.models import build_model, predict, seed_everything
    from mlserving_training.runtime import batch_signature, predict_tflite

    seed_everything(3)
    model = build_model(kind, window=6, units=8)
    flat = to_tflite(model)  # builtin ops only: conversion fails otherwise
    assert batch_signature(flat) == ([-1, 6], [-1, 1])
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    parity = check_parity(predict(model, x), flat, x, tolerance=1e-5)
    assert parity.passed and parity.max_abs_diff < 1e-5 and parity.windows == 50
    assert predict_tflite(flat, x[:1]).shape == (1,)


def test_parity_gate_refuses_a_model_that_disagrees_with_keras() -> None:
    from mlserving_training.export import ExportError, check_parity, to_tflite
    from mlserving_training.models import build_model, predict, seed_everything

    seed_everything(3)
    model = build_model("ann", window=6, units=8)
    flat = to_tflite(model)
    x = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    keras_out = predict(model, x)
    keras_out[7] += 1e-3  # what a broken conversion would look like
    with pytest.raises(ExportError, match="not publishing"):
        check_parity(keras_out, flat, x, tolerance=1e-4)
