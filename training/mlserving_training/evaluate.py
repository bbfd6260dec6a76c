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


def smape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Symmetric MAPE in percent, 0..200: scale-free, and defined where the actual is 0 (unlike MAPE)."""
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    denominator = np.abs(a) + np.abs(p)
    ratio = np.divide(2 * np.abs(p - a), denominator, out=np.zeros_like(a), where=denominator > 0)
    return float(100 * np.mean(ratio))


def naive_forecast(x: np.ndarray) -> np.ndarray:
    """Last value of each window: the baseline every forecaster must beat."""
    return np.asarray(x)[:, -1]


def split_metrics(split: Split, predictions: np.ndarray, norm: Normalization) -> dict[str, float]:
    """MAE/RMSE of model and naive on one split, in raw units (normalised predictions in); for a
    day-ahead model these are its first step's (`horizon_metrics` scores every step)."""
    predictions = np.asarray(predictions)
    actual = denormalize(split.y_first, norm)
    model = error_metrics(actual, denormalize(predictions if predictions.ndim == 1 else predictions[:, 0], norm))
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


def horizon_metrics(split: Split, predictions: np.ndarray, norm: Normalization, scale: float, period: int) -> dict:
    """Per forecast step of a day-ahead model: MAE, the last-value naive's MAE and MASE (MAE /
    `scale`, from baselines.mase_scale, with its `period`), in raw units."""
    actual = denormalize(split.y.reshape(len(split), -1), norm)
    predicted = denormalize(np.asarray(predictions).reshape(len(split), -1), norm)
    naive = denormalize(naive_forecast(split.x), norm)[:, None]
    mae = np.mean(np.abs(predicted - actual), axis=0)
    naive_mae = np.mean(np.abs(naive - actual), axis=0)
    return {
        "steps": int(actual.shape[1]),
        "mae": [float(v) for v in mae],
        "naive_mae": [float(v) for v in naive_mae],
        "mase": [float(v / scale) if scale > 0 else math.inf for v in mae],
        "mase_mean": float(np.mean(mae) / scale) if scale > 0 else math.inf,
        "mase_scale": scale,
        "mase_period": period,
    }
