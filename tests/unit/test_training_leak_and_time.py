"""Real-data handling: no filled reading leaks its target, timestamps in any unit, declared intervals.

Issue #16: gaps were interpolated toward the next reading and those filled points then served as
inputs whose target was that very reading, so every metric (and the gate's naive MAE) looked
better than it is. These tests count such windows on a series where many gaps end right before a
target, and check the time handling that real series need.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlserving_training.cleaning import CleaningError, clean_series
from mlserving_training.features import build_dataset
from mlserving_training.gate import build_holdout

T0 = 1_704_067_200
H = 3600


def frame(times: list[object], values: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"reading_time": [str(t) for t in times], "value": [str(v) for v in values]})


def gappy_series(n: int = 600, seed: int = 3):
    """Hourly readings with a 1-3 reading gap before every 7th reading (like a change-driven feed)."""
    rng = np.random.default_rng(seed)
    times, values, t = [], [], T0
    for i in range(n):
        if i % 7 == 6:
            t += H * int(rng.integers(1, 4))
        times.append(t)
        values.append(100 + 10 * np.sin(i / 5) + rng.normal(0, 1))
        t += H
    return clean_series(frame(times, values), max_gap_fill=3)


def leaking(series, target_index: np.ndarray, window: int) -> int:
    """Windows whose inputs hold a point interpolated toward their own target (computed here)."""
    real = np.flatnonzero(~series.filled)
    count = 0
    for j in target_index:
        for k in range(j - window, j):
            if series.filled[k] and real[np.searchsorted(real, k)] >= j:
                count += 1
                break
    return count


def test_gappy_series_has_gaps_to_leak() -> None:
    _, report = gappy_series()
    assert report.repaired["gap_filled"] > 100  # the series is one where the leak matters


@pytest.mark.parametrize("window", [3, 6, 12])
def test_no_training_window_sees_a_point_filled_from_its_target(window: int) -> None:
    series, _ = gappy_series()
    dataset = build_dataset(series, window, 0.7, 0.15)
    index = {int(t): i for i, t in enumerate(series.times)}
    for name in ("train", "val", "test"):
        targets = np.array([index[int(t)] for t in dataset.split(name).times])
        assert len(targets) > 10
        assert leaking(series, targets, window) == 0, name
        assert not series.filled[targets].any()


def test_gate_holdout_has_no_leaking_window() -> None:
    series, _ = gappy_series()
    holdout = build_holdout(series, 0.7, 0.15, 6)
    assert len(holdout) > 10
    assert leaking(series, holdout.targets, 6) == 0


@pytest.mark.parametrize("unit,scale", [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_timestamp_unit_is_detected_and_reported(unit: str, scale: int) -> None:
    times = [(T0 + i * 1800) * scale for i in range(50)]
    series, report = clean_series(frame(times, range(50)))
    assert report.time_unit == unit
    assert report.interval_s == 1800.0  # a nanosecond column must not train "every 1e+12 s"
    assert series.times[0] == T0 and len(series) == 50
    assert f"timestamps in {unit}" in report.lines()[0]


def test_iso_8601_timestamps_are_read_as_utc() -> None:
    times = [pd.Timestamp(T0 + i * 60, unit="s", tz="UTC").isoformat() for i in range(10)]
    times[3] = times[3].replace("+00:00", "Z")
    series, report = clean_series(frame(times, range(10)))
    assert report.time_unit == "iso" and report.dropped["bad_timestamp"] == 0
    assert series.times.tolist() == [T0 + i * 60 for i in range(10)]


def test_declared_unit_wins_and_unknown_unit_is_named() -> None:
    _, report = clean_series(frame([T0 * 1000 + i * 60_000 for i in range(5)], range(5)), time_unit="ms")
    assert report.time_unit == "ms" and report.interval_s == 60
    with pytest.raises(CleaningError, match="time_unit"):
        clean_series(frame([T0], [1]), time_unit="minutes")


def test_same_second_readings_are_averaged_when_declared_mean() -> None:
    # bursts of distinct readings within one second (change-driven feeds): 14 % of a real series
    data = frame([T0, T0 + 1, T0 + 1, T0 + 1, T0 + 2], [1.0, 2.0, 4.0, 9.0, 5.0])
    series, report = clean_series(data, duplicates="mean")
    assert series.values.tolist() == [1.0, 5.0, 5.0]
    assert report.repaired["duplicate_timestamp"] == 2 and "duplicate_timestamp" not in report.dropped
    last, report_last = clean_series(data, duplicates="last")
    assert last.values.tolist() == [1.0, 9.0, 5.0] and report_last.dropped["duplicate_timestamp"] == 2


def test_sub_second_times_share_a_second() -> None:
    data = frame([T0 * 1000, T0 * 1000 + 200, T0 * 1000 + 900, T0 * 1000 + 1500], [1.0, 2.0, 3.0, 7.0])
    series, report = clean_series(data, duplicates="mean")
    assert report.time_unit == "ms" and series.values.tolist() == [2.0, 7.0]


def test_declared_interval_resamples_an_event_driven_series() -> None:
    # readings at irregular seconds; 60 s grid, last value per minute, quiet minutes hold the value
    times = [T0 + 5, T0 + 30, T0 + 59, T0 + 61, T0 + 200, T0 + 250, T0 + 900]
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    series, report = clean_series(frame(times, values), interval_s="60s", resample="last", max_gap_fill=3)
    assert report.interval_s == 60 and report.resample == "last"
    assert series.times.tolist()[:5] == [T0, T0 + 60, T0 + 120, T0 + 180, T0 + 240]
    assert series.values.tolist()[:5] == [3.0, 4.0, 4.0, 5.0, 6.0]
    assert report.repaired["carried_forward"] == 1 and report.segments == 2  # 240 -> 900 is 10 empty minutes
    assert not series.filled.any()
    mean, _ = clean_series(frame(times, values), interval_s=60, resample="mean")
    assert mean.values.tolist()[0] == 2.0


def test_resample_needs_an_interval_and_intervals_are_validated() -> None:
    with pytest.raises(CleaningError, match="resample"):
        clean_series(frame([T0, T0 + 1], [1, 2]), resample="last")
    for bad in ("0s", "fast", "10parsecs", "0.5s"):
        with pytest.raises(CleaningError, match="interval"):
            clean_series(frame([T0, T0 + 1], [1, 2]), interval_s=bad, resample="last")


def _event_driven_raw(n: int = 3000, seed: int = 1):
    """A change-driven feed: irregular steps of 1-90 s, bursts of readings within one second, in ns."""
    from mlserving_training.data import from_frame

    rng = np.random.default_rng(seed)
    steps = rng.choice([0, 0, 1, 1, 1, 2, 5, 30, 90], size=n)
    seconds = T0 + np.cumsum(steps)
    nanos = seconds.astype(np.int64) * 10**9 + rng.integers(0, 10**9, n)
    values = 50 + 5 * np.sin(np.arange(n) / 40) + rng.normal(0, 0.3, n)
    return from_frame(pd.DataFrame({"station_id": "S", "parameter_id": "1", "reading_time": nanos, "value": values}))


def test_declared_interval_reaches_cleaning_through_config_and_cli() -> None:
    from mlserving_training.cli import _train_overrides, build_parser
    from mlserving_training.config import load_config
    from mlserving_training.pipeline import prepare

    args = build_parser().parse_args(["train", "--interval", "60s", "--resample", "mean", "--duplicates", "mean"])
    config = load_config(None, _train_overrides(args), environ={})
    assert (config.interval, config.resample, config.duplicates) == ("60s", "mean", "mean")
    _, _, dataset, report = prepare(config, _event_driven_raw())
    assert report.time_unit == "ns" and report.interval_s == 60 and report.resample == "mean"
    assert report.repaired["duplicate_timestamp"] > 0 and report.repaired["resampled"] > 0
    assert np.all(np.diff(dataset.train.times) % 60 == 0)
    # Undeclared, the same feed is cut into many tiny segments on its most common step.
    _, _, _, raw_report = prepare(load_config(None, {"duplicates": "mean"}, environ={}), _event_driven_raw())
    assert raw_report.interval_s < 60 and raw_report.segments > 10 * report.segments


def test_windows_per_split_are_reported_and_too_few_warned() -> None:
    from mlserving_training.config import load_config
    from mlserving_training.data import from_frame
    from mlserving_training.pipeline import prepare, window_lines

    n = 120
    frame = pd.DataFrame(
        {
            "station_id": "S",
            "parameter_id": "1",
            "reading_time": T0 + H * np.arange(n),
            "value": np.sin(np.arange(n) / 3),
        }
    )
    config = load_config(None, {"window": 6}, environ={})
    _, _, dataset, _ = prepare(config, from_frame(frame))
    lines = window_lines(dataset, 6, config.min_windows)
    assert (
        lines[0] == f"windows: train {len(dataset.train)}, val {len(dataset.val)}, test {len(dataset.test)} (window 6)"
    )
    warned = [line for line in lines[1:] if line.startswith("WARNING")]
    assert len(dataset.test) < 30 and any("test split has only" in line for line in warned)
    assert not any("train split" in line for line in warned)
    with pytest.raises(Exception, match="interval"):
        load_config(None, {"interval": "soon"}, environ={})
