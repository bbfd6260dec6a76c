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
    """Windows x (n, window) and targets y (n,) — (n, horizon) for horizon > 1 — both normalised
    float32, plus the (first) target times; `calendar` (n, k) holds a calendar model's extra inputs."""

    x: np.ndarray
    y: np.ndarray
    times: np.ndarray
    start_time: int
    end_time: int
    calendar: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def inputs(self) -> np.ndarray:
        """What the model is fed: the window, then the calendar features (the server's layout)."""
        return self.x if self.calendar is None else np.ascontiguousarray(np.hstack([self.x, self.calendar]))

    @property
    def y_first(self) -> np.ndarray:
        """Targets of the first forecast step: what one-step metrics and baselines compare with."""
        return self.y if self.y.ndim == 1 else self.y[:, 0]


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    normalization: Normalization
    window: int
    horizon: int = 1
    calendar: dict | None = None  # the package's `calendar` section, None without calendar inputs

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
    a = round(n * train_fraction)
    b = round(n * (train_fraction + val_fraction))
    return a, b


def make_windows(
    values: np.ndarray, segment: np.ndarray, window: int, target_ok: np.ndarray | None = None, horizon: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (window inputs, next `horizon` values) lying inside one segment; returns x, y, first-target indices.

    `target_ok` can exclude targets (interpolated readings are never targets); with horizon > 1
    every step must be an acceptable target and y is (n, horizon).
    """
    n = len(values)
    if n < window + horizon:
        y_shape = (0,) if horizon == 1 else (0, horizon)
        return np.zeros((0, window), np.float32), np.zeros(y_shape, np.float32), np.zeros(0, np.int64)
    x_all = np.lib.stride_tricks.sliding_window_view(values[:-1], window)  # x_all[i] = values[i:i+window]
    targets = np.arange(window, n - horizon + 1)
    last = targets + horizon - 1
    mask = segment[last] == segment[targets - window]
    if target_ok is not None:
        ok = target_ok[targets]
        for step in range(1, horizon):
            ok = ok & target_ok[targets + step]
        mask &= ok
    chosen = targets[mask]
    if horizon == 1:
        y = values[chosen].astype(np.float32)
    else:
        y = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(values, horizon)[chosen], dtype=np.float32)
    return np.ascontiguousarray(x_all[chosen - window], dtype=np.float32), y, chosen


def calendar_section(series: CleanSeries) -> dict:
    """The package's `calendar` metadata for a model trained on `series` (all features)."""
    from mlserving_common.calendar import CALENDAR_FEATURES

    return {"features": list(CALENDAR_FEATURES), "interval_s": float(series.interval_s)}


def calendar_inputs(last_times: np.ndarray, calendar: dict | None) -> np.ndarray | None:
    """A calendar model's extra inputs for windows whose last reading is at `last_times`;
    the server computes the same from a request's `time` (mlserving_common.calendar)."""
    if not calendar:
        return None
    from mlserving_common.calendar import features_after

    return features_after(last_times, calendar["interval_s"], calendar["features"])


def build_dataset(
    series: CleanSeries,
    window: int,
    train_fraction: float,
    val_fraction: float,
    horizon: int = 1,
    calendar: bool = False,
) -> Dataset:
    cal = calendar_section(series) if calendar else None
    a, b = split_bounds(len(series), train_fraction, val_fraction)
    norm = fit_normalization(series.values[:a])
    scaled = normalize(series.values, norm)
    parts = {}
    for name, (lo, hi) in zip(SPLITS, ((0, a), (a, b), (b, len(series))), strict=True):
        x, y, idx = make_windows(scaled[lo:hi], series.segment[lo:hi], window, series.target_ok[lo:hi], horizon)
        if len(y) == 0:
            raise FeatureError(
                f"{name} split has no windows: {hi - lo} readings for window {window}"
                f" ({len(series)} clean readings in all); use more data or a smaller window"
            )
        times = series.times[lo:hi]
        parts[name] = Split(x, y, times[idx], int(times[0]), int(times[-1]), calendar_inputs(times[idx - 1], cal))
    return Dataset(parts["train"], parts["val"], parts["test"], norm, window, horizon, cal)
