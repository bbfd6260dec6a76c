"""Day-ahead windows and the new trainer settings, without TensorFlow.

- make_windows with a horizon: each target row is the next `horizon` readings, no row crosses a
  segment boundary or uses a filled reading as a target; horizon 1 is exactly the old behaviour.
- `linear`, `horizon` and `calendar` are settings of the config and flags of the CLI.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlserving_training.cli import _train_overrides, build_parser
from mlserving_training.config import ConfigError, TrainConfig
from mlserving_training.features import make_windows


def test_horizon_targets_are_the_next_readings_inside_one_segment() -> None:
    values = np.arange(20, dtype=np.float64)
    segment = np.array([0] * 12 + [1] * 8, dtype=np.int32)
    ok = np.ones(20, dtype=bool)
    ok[15] = False  # a filled reading: never a target of any step
    x, y, first = make_windows(values, segment, 3, ok, horizon=4)
    assert y.shape == (len(x), 4)
    for row, start in zip(range(len(x)), first, strict=True):
        assert list(x[row]) == list(values[start - 3 : start])
        assert list(y[row]) == list(values[start : start + 4])
        assert segment[start - 3] == segment[start + 3]
        assert ok[start : start + 4].all()
    # segment 1 is 12..19: a row starting at 15 would have the filled reading as a target; the row
    # at 16 (inputs 13..15) may use it as an input
    assert list(first) == [3, 4, 5, 6, 7, 8, 16]
    _, y1, first1 = make_windows(values, segment, 3, ok)
    assert y1.ndim == 1 and list(y1) == list(values[first1])
    assert 15 not in first1 and list(first1) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19]


def test_settings_and_flags() -> None:
    TrainConfig(model="linear", window=336, horizon=48, calendar=True).validate()
    with pytest.raises(ConfigError, match="horizon"):
        TrainConfig(horizon=0).validate()
    args = build_parser().parse_args(["train", "--model", "linear", "--window", "48", "--horizon", "48", "--calendar"])
    overrides = _train_overrides(args)
    assert overrides["model"] == "linear" and overrides["window"] == 48
    assert overrides["horizon"] == 48 and overrides["calendar"] is True
    assert _train_overrides(build_parser().parse_args(["train"]))["calendar"] is None  # unset: config decides
