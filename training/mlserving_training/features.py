"""From a clean series to model inputs: time-ordered splits, z-score, sliding windows.

The split is made on the series first and windows are cut inside each split (and inside each
gap-free segment), so no validation or test window reuses a reading the model trained on.
Normalisation is fitted on the training split only, like the server will see unknown data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlserving_common.package import Normalization
from mlserving_training.cleaning import CleanSeries

SPLITS = ("train", "val", "test")


class FeatureError(ValueError):
    """Not enough data for the requested window and split; the message says how much is there."""


@dataclass(frozen=True)
class Split:
    """Windows x (n, window) and targets y (n,), both normalised float32, plus target times."""

    x: np.ndarray
    y: np.ndarray
    times: np.ndarray
    start_time: int
    end_time: int

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    normalization: Normalization
    window: int

    def split(self, name: str) -> Split:
        return getattr(self, name)


def fit_normalization(values: np.ndarray) -> Normalization:
    std = float(np.std(values))
    if not np.isfinite(std) or std <= 0:
        raise FeatureError("train split is constant; cannot z-score it (std = 0)")
    return Normalization(mean=float(np.mean(values)), std=std)


def normalize(values: np.ndarray, norm: Normalization) -> np.ndarray:
    return (np.asarray(values, dtype=np.float64) - norm.mean) / norm.std


def denormalize(values: np.ndarray, norm: Normalization) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) * norm.std + norm.mean


def split_bounds(n: int, train_fraction: float, val_fraction: float) -> tuple[int, int]:
    """Indices a, b: train = [0, a), val = [a, b), test = [b, n)."""
    a = int(round(n * train_fraction))
    b = int(round(n * (train_fraction + val_fraction)))
    return a, b


def make_windows(
    values: np.ndarray, segment: np.ndarray, window: int, target_ok: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (window inputs, next value) pairs lying inside one segment; returns x, y, target indices.

    `target_ok` can exclude targets (interpolated readings are never targets).
    """
    n = len(values)
    if n <= window:
        return np.zeros((0, window), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    x_all = np.lib.stride_tricks.sliding_window_view(values[:-1], window)  # x_all[i] = values[i:i+window]
    targets = np.arange(window, n)
    same_segment = segment[targets] == segment[targets - window]
    mask = same_segment if target_ok is None else same_segment & target_ok[targets]
    return (
        np.ascontiguousarray(x_all[mask], dtype=np.float32),
        values[targets[mask]].astype(np.float32),
        targets[mask],
    )


def build_dataset(series: CleanSeries, window: int, train_fraction: float, val_fraction: float) -> Dataset:
    a, b = split_bounds(len(series), train_fraction, val_fraction)
    norm = fit_normalization(series.values[:a])
    scaled = normalize(series.values, norm)
    parts = {}
    for name, (lo, hi) in zip(SPLITS, ((0, a), (a, b), (b, len(series)))):
        x, y, idx = make_windows(scaled[lo:hi], series.segment[lo:hi], window, ~series.filled[lo:hi])
        if len(y) == 0:
            raise FeatureError(
                f"{name} split has no windows: {hi - lo} readings for window {window}"
                f" ({len(series)} clean readings in all); use more data or a smaller window"
            )
        times = series.times[lo:hi]
        parts[name] = Split(x, y, times[idx], int(times[0]), int(times[-1]))
    return Dataset(parts["train"], parts["val"], parts["test"], norm, window)
