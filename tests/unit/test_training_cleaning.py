"""Each cleaning rule on a small hand-made series, then all of them on generated data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlserving_training.cleaning import clean_series, infer_interval
from mlserving_training.generate import CLEAN, generate_bts

H = 3600
T0 = 1_704_067_200


def rows(pairs: list[tuple[object, object]]) -> pd.DataFrame:
    return pd.DataFrame({"reading_time": [str(t) for t, _ in pairs], "value": [str(v) for _, v in pairs]})


def hourly(values: list[object], start: int = T0) -> list[tuple[object, object]]:
    return [(start + i * H, v) for i, v in enumerate(values)]


def test_clean_input_passes_unchanged() -> None:
    series, report = clean_series(rows(hourly([1, 2, 3, 4])))
    assert series.values.tolist() == [1, 2, 3, 4]
    assert series.times.tolist() == [T0 + i * H for i in range(4)]
    assert not series.filled.any() and series.segment.tolist() == [0, 0, 0, 0]
    assert sum(report.dropped.values()) == 0 and sum(report.repaired.values()) == 0
    assert (report.rows_in, report.rows_out, report.interval_s, report.segments) == (4, 4, 3600.0, 1)


def test_bad_timestamps_are_dropped() -> None:
    data = [*hourly([1, 2, 3, 4]), ("", 5), ("yesterday", 6), ("inf", 7)]
    series, report = clean_series(rows(data))
    assert report.dropped["bad_timestamp"] == 3
    assert series.values.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("token", ["", "nan", "NaN", "null", "NA", "None", "  "])
def test_missing_values_are_dropped(token: str) -> None:
    # The missing reading leaves a one-step gap, which the gap rule then fills.
    series, report = clean_series(rows(hourly([1, token, 3, 4])), max_gap_fill=0)
    assert report.dropped["missing_value"] == 1
    assert report.dropped["non_numeric"] == 0
    assert series.values.tolist() == [1, 3, 4]


@pytest.mark.parametrize("token", ["ERR", "12,5", "--", "inf", "-inf"])
def test_non_numeric_values_are_dropped(token: str) -> None:
    series, report = clean_series(rows(hourly([1, 2, token, 4])), max_gap_fill=0)
    assert report.dropped["non_numeric"] == 1
    assert series.values.tolist() == [1, 2, 4]


def test_sentinels_are_dropped_and_configurable() -> None:
    data = hourly([1, 999999, 3, -999999, 5, 9999])
    _, report = clean_series(rows(data), max_gap_fill=0)
    assert report.dropped["sentinel"] == 2
    series, report = clean_series(rows(data), sentinels=[9999], max_gap_fill=0)
    assert report.dropped["sentinel"] == 1
    assert 999999 in series.values.tolist()


def test_unsorted_rows_are_sorted_and_counted() -> None:
    data = hourly([1, 2, 3, 4, 5])
    shuffled = [data[0], data[2], data[1], data[4], data[3]]
    series, report = clean_series(rows(shuffled))
    assert report.repaired["unsorted"] == 2
    assert series.values.tolist() == [1, 2, 3, 4, 5]
    assert np.all(np.diff(series.times) > 0)


def test_duplicate_timestamps_keep_the_last_row() -> None:
    data = [*hourly([1, 2, 3]), (T0 + H, 20), (T0 + H, 200)]
    series, report = clean_series(rows(data))
    assert report.dropped["duplicate_timestamp"] == 2
    assert series.values.tolist() == [1, 200, 3]


def test_short_gaps_are_interpolated_and_marked() -> None:
    data = [(T0, 0.0), (T0 + H, 1.0), (T0 + 4 * H, 4.0), (T0 + 5 * H, 5.0)]
    series, report = clean_series(rows(data), max_gap_fill=2)
    assert report.repaired["gap_filled"] == 2
    assert series.values.tolist() == pytest.approx([0, 1, 2, 3, 4, 5])
    assert series.filled.tolist() == [False, False, True, True, False, False]
    assert series.times.tolist() == [T0 + i * H for i in range(6)]
    assert report.segments == 1


def test_long_gaps_split_the_series_into_segments() -> None:
    data = hourly([1, 2, 3]) + hourly([7, 8], start=T0 + 10 * H)
    series, report = clean_series(rows(data), max_gap_fill=3)
    assert report.repaired["gap_split"] == 1 and report.repaired["gap_filled"] == 0
    assert series.segment.tolist() == [0, 0, 0, 1, 1]
    assert report.segments == 2


def test_interval_is_the_most_common_step() -> None:
    times = np.array([0, 900, 1800, 2700, 9000, 9900], dtype=np.int64)
    assert infer_interval(times) == 900.0


def test_generated_data_exercises_every_rule_and_comes_out_regular() -> None:
    frame = generate_bts(stations=1, days=60, seed=3)
    series, report = clean_series(frame, max_gap_fill=3)
    for reason in ("missing_value", "non_numeric", "sentinel", "duplicate_timestamp"):
        assert report.dropped[reason] > 0, reason
    for reason in ("unsorted", "gap_filled", "gap_split"):
        assert report.repaired[reason] > 0, reason
    assert np.all(np.diff(series.times) > 0)
    assert np.all(np.isfinite(series.values)) and series.values.max() < 999999
    same_segment = series.segment[1:] == series.segment[:-1]
    assert np.all(np.diff(series.times)[same_segment] == report.interval_s)


def test_clean_generated_data_needs_no_repair() -> None:
    frame = generate_bts(stations=1, days=10, seed=3, rates=CLEAN)
    _, report = clean_series(frame)
    assert sum(report.dropped.values()) == 0 and sum(report.repaired.values()) == 0
    assert report.rows_out == 240


def test_generator_is_deterministic_and_seed_dependent() -> None:
    a = generate_bts(stations=2, days=5, seed=1)
    b = generate_bts(stations=2, days=5, seed=1)
    c = generate_bts(stations=2, days=5, seed=2)
    assert a.equals(b)
    assert not a.equals(c)
    assert sorted(a["station_id"].unique()) == ["BTS001", "BTS002"]
