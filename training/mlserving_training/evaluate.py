"""Forecast quality in the series' own units, always next to the naive last-value forecast.

A model that cannot beat "tomorrow looks like today" is not worth serving; metadata says so.
"""

from __future__ import annotations

import math

import numpy as np

from mlserving_common.package import Normalization
from mlserving_training.features import Split, denormalize


def error_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    err = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(math.sqrt(np.mean(err**2)))}


def naive_forecast(x: np.ndarray) -> np.ndarray:
    """Last value of each window: the baseline every forecaster must beat."""
    return np.asarray(x)[:, -1]


def split_metrics(split: Split, predictions: np.ndarray, norm: Normalization) -> dict[str, float]:
    """MAE/RMSE of model and naive on one split, in raw units (normalised predictions in)."""
    actual = denormalize(split.y, norm)
    model = error_metrics(actual, denormalize(predictions, norm))
    naive = error_metrics(actual, denormalize(naive_forecast(split.x), norm))
    return {
        "mae": model["mae"],
        "rmse": model["rmse"],
        "naive_mae": naive["mae"],
        "naive_rmse": naive["rmse"],
        "mae_vs_naive": model["mae"] / naive["mae"] if naive["mae"] > 0 else math.inf,
        "windows": len(split),
    }


def beats_naive(test_metrics: dict[str, float]) -> bool:
    return test_metrics["mae"] < test_metrics["naive_mae"]
