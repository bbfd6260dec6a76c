"""Live records -> training data: overlap stitching, rotation, rows, and the record/topic contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlserving_common import protocol
from mlserving_common.series import overlap_shift
from mlserving_training.cleaning import clean_series
from mlserving_training.generate import generate_bts, inject_level_shift
from mlserving_training.records import SeriesHistory, history_rows, stitch

READINGS = [float(v) for v in np.round(np.random.default_rng(3).normal(20, 2, 120), 3)]


def windows(start: int, stop: int, step: int = 1, w: int = 6) -> list[tuple[float, ...]]:
    return [tuple(READINGS[i : i + w]) for i in range(start, stop, step)]


def test_overlap_shift_finds_the_smallest_shift():
    a = windows(0, 1)[0]
    assert overlap_shift(a, a) == 0
    assert overlap_shift(a, windows(1, 2)[0]) == 1
    assert overlap_shift(a, windows(3, 4)[0]) == 3
    assert overlap_shift(a, windows(6, 7)[0]) is None  # no shared reading: cannot be placed
    assert overlap_shift(a, a[:5]) is None


def records(source: str, items: list[tuple[float, ...]], first: int = 0) -> list[tuple]:
    """(source, order, index within the request, window) as the drain builds them."""
    return [(source, float(first + i), 0, w) for i, w in enumerate(items)]


def test_windows_from_several_replicas_stitch_back_into_the_series():
    # Two replicas served alternate windows; each chains its own (shift 2), the runs are joined.
    history = stitch(SeriesHistory(), records("b", windows(1, 40, 2)) + records("a", windows(0, 40, 2)))
    assert history.segments == [READINGS[: 39 + 6]]
    # Three replicas, only one of them drained: shift 3 still overlaps.
    history = stitch(SeriesHistory(), records("a", windows(0, 40, 3)))
    assert history.segments == [READINGS[: 39 + 6]]


def test_one_replica_far_behind_another_still_makes_one_series():
    # Replica b's windows all numbered long before replica a's: orders across servers do not matter.
    history = stitch(SeriesHistory(), records("a", windows(0, 80, 2), first=1000) + records("b", windows(1, 80, 2)))
    assert history.segments == [READINGS[: 79 + 6]]
    # Windows entirely inside another run (retries, late duplicates) add nothing.
    stitch(history, records("c", windows(10, 20)))
    assert history.segments == [READINGS[: 79 + 6]]


def test_retries_are_ignored_and_gaps_start_a_new_segment():
    items = windows(0, 5) + windows(4, 5) + windows(20, 25)  # a retry of window 4, then a jump
    history = stitch(SeriesHistory(), records("a", items))
    assert history.segments == [READINGS[0:10], READINGS[20:30]]
    # Later drains continue the last segment.
    stitch(history, records("a", windows(25, 27), first=100))
    assert history.segments[-1] == READINGS[20:32]
    assert history.ends == [4.0, 101.0]


def test_batched_instances_keep_their_order_within_one_request():
    items = [("a", 5.0, i, w) for i, w in enumerate(windows(0, 10))]
    assert stitch(SeriesHistory(), list(reversed(items))).segments == [READINGS[:15]]


def test_history_rotates_out_the_oldest_readings_and_survives_json():
    history = stitch(SeriesHistory(), records("a", windows(0, 5) + windows(20, 40)))
    assert history.readings == 10 + 25
    assert history.trim(30) == 5
    assert history.readings == 30 and history.segments[0] == READINGS[5:10]
    assert history.trim(22) == 8
    assert history.segments == [READINGS[23:45]]
    again = SeriesHistory.from_json(history.to_json())
    assert again == history
    stitch(again, records("a", windows(40, 41), first=99))
    assert again.segments == [READINGS[23:46]]


def test_rows_become_a_cleaned_series_with_segments_split():
    history = SeriesHistory([READINGS[:10], READINGS[20:30]])
    rows = history_rows("BTS001/1", history, start=1_000, interval_s=3600, gap_steps=5)
    assert rows[0] == ("BTS001", "1", 1000, repr(READINGS[0]))
    frame = pd.DataFrame(rows, columns=["station_id", "parameter_id", "reading_time", "value"]).astype(str)
    clean, report = clean_series(frame, max_gap_fill=3)
    assert len(clean) == 20 and report.segments == 2
    np.testing.assert_array_equal(clean.values, READINGS[:10] + READINGS[20:30])


def test_record_contract_round_trips_and_topics_are_safe():
    payload = protocol.encode_record(
        "tenant-a", "BTS001/1", "lstm", [(1.0, 2.0), (2.0, 3.0)], at=12.5, source="server-1", seq=7
    )
    body = protocol.decode_record(payload)
    assert body["windows"] == [[1.0, 2.0], [2.0, 3.0]] and body["t"] == 12.5 and body["series_id"] == "BTS001/1"
    assert (body["src"], body["seq"]) == ("server-1", 7)
    assert protocol.records_topic("tenant-a", "BTS001/1") == "ml/_records/tenant-a/BTS001/1"
    assert protocol.records_topic("tenant-a", "a+b#c", "p") == "p/_records/tenant-a/a_b_c"
    assert protocol.records_filter() == "ml/_records/+/#"
    assert protocol.records_filter("tenant-a", "BTS001/1") == "ml/_records/tenant-a/BTS001/1"
    assert protocol.events_topic("drift") == "ml/_events/drift"
    for bad in (b"[]", b'{"series_id": "x", "windows": [[1]]}', b'{"series_id": "x", "t": 1, "windows": [["a"]]}'):
        with pytest.raises(ValueError):
            protocol.decode_record(bad)


def test_generator_level_shift_moves_only_the_newest_days():
    base = generate_bts(stations=1, days=20, seed=4)
    shifted = generate_bts(stations=1, days=20, seed=4, shift=0.5, shift_days=5)
    assert len(base) == len(shifted)
    b = pd.to_numeric(base["value"], errors="coerce").to_numpy()
    s = pd.to_numeric(shifted["value"], errors="coerce").to_numpy()
    t = base["reading_time"].astype(int).to_numpy()
    late = t >= t.max() - 5 * 86400 + 3600
    ok = np.isfinite(b) & np.isfinite(s) & (b < 1e5)
    assert np.allclose(b[ok & ~late], s[ok & ~late], atol=1e-3)
    assert np.all(s[ok & late] - b[ok & late] > 5)  # +50 % of a ~20-25 kW level
    assert list(inject_level_shift(np.ones(4), 1.0, 1)) == [1.0, 1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="shift_days"):
        generate_bts(stations=1, days=5, seed=1, shift=0.1, shift_days=0)
