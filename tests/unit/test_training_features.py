"""Normalisation, windows and time-ordered splits."""

from __future__ import annotations

import numpy as np
import pytest

from mlserving_common.package import Normalization
from mlserving_training.cleaning import CleanSeries, clean_series
from mlserving_training.features import (
    FeatureError,
    build_dataset,
    denormalize,
    fit_normalization,
    make_windows,
    normalize,
)
from mlserving_training.generate import generate_bts


def regular(values: np.ndarray, segment: np.ndarray | None = None, filled: np.ndarray | None = None) -> CleanSeries:
    n = len(values)
    return CleanSeries(
        times=1_704_067_200 + 3600 * np.arange(n, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
        segment=np.zeros(n, np.int32) if segment is None else segment,
        filled=np.zeros(n, bool) if filled is None else filled,
        interval_s=3600.0,
    )


def test_normalisation_round_trip() -> None:
    values = np.random.default_rng(0).normal(50, 7, 500)
    norm = fit_normalization(values)
    z = normalize(values, norm)
    assert z.mean() == pytest.approx(0, abs=1e-9) and z.std() == pytest.approx(1, abs=1e-9)
    assert denormalize(z, norm) == pytest.approx(values, abs=1e-9)


def test_constant_training_data_is_refused() -> None:
    with pytest.raises(FeatureError, match="std = 0"):
        fit_normalization(np.full(10, 3.0))


def test_windows_have_the_requested_shape_and_the_next_value_as_target() -> None:
    values = np.arange(20, dtype=np.float64)
    x, y, idx = make_windows(values, np.zeros(20, np.int32), window=6)
    assert x.shape == (14, 6) and y.shape == (14,) and x.dtype == np.float32
    assert x[0].tolist() == [0, 1, 2, 3, 4, 5] and y[0] == 6
    assert np.all(y == x[:, -1] + 1)
    assert idx.tolist() == list(range(6, 20))


def test_windows_never_cross_a_segment_boundary() -> None:
    values = np.arange(12, dtype=np.float64)
    segment = np.array([0] * 5 + [1] * 7, np.int32)
    x, y, _ = make_windows(values, segment, window=3)
    # Segment 0 (5 points): targets 3, 4; segment 1 (7 points, from 5): targets 8..11.
    assert y.tolist() == [3, 4, 8, 9, 10, 11]
    assert x[2].tolist() == [5, 6, 7]


def test_interpolated_readings_are_never_targets() -> None:
    values = np.arange(10, dtype=np.float64)
    filled = np.zeros(10, bool)
    filled[7] = True
    _, y, _ = make_windows(values, np.zeros(10, np.int32), window=3, target_ok=~filled)
    assert 7 not in y.tolist() and len(y) == 6


def test_splits_are_in_time_order_without_overlap() -> None:
    series, _ = clean_series(generate_bts(stations=1, days=40, seed=5))
    data = build_dataset(series, window=6, train_fraction=0.7, val_fraction=0.15)
    train, val, test = data.train, data.val, data.test
    assert train.end_time < val.start_time and val.end_time < test.start_time
    # Every reading a window touches (inputs and target) lies inside its own split.
    interval = int(series.interval_s)
    for split in (train, val, test):
        first_input = split.times - 6 * interval
        assert first_input.min() >= split.start_time and split.times.max() <= split.end_time
    assert len(train) > len(val) > 0 and len(test) > 0
    assert train.x.shape[1:] == (6,) and test.x.dtype == np.float32


def test_normalisation_is_fitted_on_the_training_split_only() -> None:
    values = np.concatenate([np.linspace(0, 1, 70), np.full(30, 100.0)])
    data = build_dataset(regular(values), window=3, train_fraction=0.7, val_fraction=0.15)
    expected = fit_normalization(values[:70])
    assert data.normalization == Normalization(expected.mean, expected.std)
    assert denormalize(data.test.y, data.normalization) == pytest.approx(np.full(len(data.test), 100.0))


def test_too_little_data_names_the_split() -> None:
    with pytest.raises(FeatureError, match="test split has no windows"):
        build_dataset(regular(np.arange(40, dtype=float)), window=6, train_fraction=0.6, val_fraction=0.35)
