"""Keras -> TFLite (builtin ops only, float32, resizable batch) and the parity gate before publishing."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlserving_training.runtime import batch_signature, predict_tflite


class ExportError(RuntimeError):
    """A model that must not be published: conversion failed or TFLite disagrees with Keras."""


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    tolerance: float
    windows: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "windows": self.windows,
            "passed": self.passed,
            "runtime": "ai-edge-litert",
            "units": "normalized",
        }


def to_tflite(model: Any) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # The converter prints the SavedModel signature on stdout; the CLI's stdout is for progress.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            flat = converter.convert()
        except Exception as exc:  # converter errors come in many classes
            raise ExportError(f"TFLite conversion with builtin ops failed: {exc}") from exc
    inputs, outputs = batch_signature(flat)
    if inputs[0] != -1 or outputs[0] != -1:
        raise ExportError(f"converted model has a fixed batch dimension: input {inputs}, output {outputs}")
    return flat


def check_parity(keras_predictions: np.ndarray, model_bytes: bytes, x: np.ndarray, tolerance: float) -> Parity:
    """Max |TFLite - Keras| over the given windows, computed with LiteRT; raise if above tolerance."""
    lite = predict_tflite(model_bytes, x)
    diff = float(np.max(np.abs(lite.astype(np.float64) - np.asarray(keras_predictions, dtype=np.float64))))
    parity = Parity(diff, tolerance, len(x))
    if not parity.passed:
        raise ExportError(f"TFLite differs from Keras by {diff:.3g} (> tolerance {tolerance:g}); not publishing")
    return parity
