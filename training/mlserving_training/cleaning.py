"""Cleaning rules for one raw BTS series; every dropped or repaired row is counted by reason.

Rules, in the order they run (docs/training.md explains why each exists):

1. bad_timestamp        reading_time empty, unparsable in its unit      -> row dropped
2. missing_value        value empty, "nan", "null", "NA", "None"        -> row dropped
3. non_numeric          value not a number (e.g. "ERR") or infinite     -> row dropped
4. sentinel             value equal to a sentinel (999999, -999999)     -> row dropped
5. unsorted             row earlier than a row above it in the file     -> rows sorted by time
6. duplicate_timestamp  same second as another row                      -> aggregated by `duplicates`:
                                                                           last (re-sent corrections; the
                                                                           earlier rows are dropped) or mean
                                                                           (distinct readings; repaired)
7. resampled            with a declared interval and `resample`         -> one value per interval (last
                                                                           or mean); an empty interval holds
                                                                           the previous value (carried_forward)
8. gap_filled           up to `max_gap_fill` missing readings in a row  -> linearly interpolated (never a
                                                                           target, nor an input of the reading
                                                                           it was interpolated toward)
9. gap_split            longer gaps                                     -> series split into segments;
                                                                           no window crosses a split

Timestamps are unix seconds, milliseconds, microseconds or nanoseconds, or ISO 8601 text; the
unit is detected from the magnitude (or declared) and reported, then floored to whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlserving_training.timegrid import (
    DUPLICATE_RULES,
    RESAMPLE_METHODS,
    TIME_UNITS,
    CleaningError,
    parse_interval,
)

_UNIT_SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}

MISSING_TOKENS = frozenset({"", "nan", "null", "na", "n/a", "none"})
DEFAULT_SENTINELS = (999999.0, -999999.0)


def detect_time_unit(numbers: np.ndarray) -> str:
    """Unit of numeric unix times from their magnitude: dates 1973-5138 in s, ms, us or ns."""
    finite = np.abs(numbers[np.isfinite(numbers)])
    if finite.size == 0:
        return "s"
    median = float(np.median(finite))
    for unit, floor in (("ns", 1e17), ("us", 1e14), ("ms", 1e11)):
        if median >= floor:
            return unit
    return "s"


def parse_times(texts: pd.Series, unit: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """(unix seconds as float, bad mask, unit used); ISO 8601 text is read as UTC when no offset."""
    if unit not in TIME_UNITS:
        raise CleaningError(f"time_unit: {unit!r} is not one of {list(TIME_UNITS)}")
    numbers, missing = _parse_numbers(texts)
    numeric = np.isfinite(numbers)
    if unit == "iso" or (unit == "auto" and numeric.sum() * 2 < (~missing).sum()):
        stamps = pd.to_datetime(
            texts.astype(str).str.strip().where(~missing, None), errors="coerce", utc=True, format="ISO8601"
        )
        seconds = np.full(len(texts), np.nan)
        ok = stamps.notna().to_numpy()
        seconds[ok] = (stamps[ok] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()  # any resolution
        return seconds, ~ok, "iso"
    used = detect_time_unit(numbers) if unit == "auto" else unit
    return numbers / _UNIT_SCALE[used], missing | ~numeric, used


@dataclass
class CleaningReport:
    rows_in: int = 0
    rows_out: int = 0
    interval_s: float = 0.0
    time_unit: str = "s"
    duplicates: str = "last"
    resample: str = ""
    segments: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "interval_s": self.interval_s,
            "time_unit": self.time_unit,
            "duplicates": self.duplicates,
            "resample": self.resample,
            "segments": self.segments,
            "dropped": dict(self.dropped),
            "repaired": dict(self.repaired),
        }

    def lines(self) -> list[str]:
        """Human-readable report, one line per reason, for the CLI."""
        resample = f", resampled ({self.resample} per interval)" if self.resample else ""
        out = [
            f"cleaning: {self.rows_in} rows in, {self.rows_out} rows out, interval {self.interval_s:g}s{resample},"
            f" {self.segments} segment(s); timestamps in {self.time_unit}, same-second readings: {self.duplicates}"
        ]
        out += [f"  dropped  {reason:<20} {count}" for reason, count in self.dropped.items()]
        out += [f"  repaired {reason:<20} {count}" for reason, count in self.repaired.items()]
        return out


@dataclass(frozen=True)
class CleanSeries:
    """A regular series: `filled` marks interpolated points, `segment` numbers the gap-free runs."""

    times: np.ndarray  # int64 unix seconds, strictly increasing
    values: np.ndarray  # float64
    segment: np.ndarray  # int32, non-decreasing, starts at 0
    filled: np.ndarray  # bool
    interval_s: float

    def __len__(self) -> int:
        return len(self.times)

    @property
    def target_ok(self) -> np.ndarray:
        """Readings that may be a forecast target without leaking it into the inputs.

        A filled point is interpolated toward the next real reading, so it carries that reading's
        value: a target right after a filled run would see itself in its inputs. Such targets, and
        filled points themselves, are excluded; a filled point is then only ever an input to targets
        that come after the reading it was filled from (which is already known by then).
        """
        after_fill = np.zeros(len(self.filled), dtype=bool)
        after_fill[1:] = self.filled[:-1]
        return ~self.filled & ~after_fill


def _parse_numbers(texts: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(numbers, missing mask); unparsable text becomes NaN but is not 'missing'."""
    stripped = texts.astype(str).str.strip()
    missing = stripped.str.lower().isin(MISSING_TOKENS).to_numpy()
    numbers = pd.to_numeric(stripped.where(~missing, None), errors="coerce").to_numpy(dtype=float)
    return numbers, missing


def clean_series(
    rows: pd.DataFrame,
    sentinels: Iterable[float] = DEFAULT_SENTINELS,
    max_gap_fill: int = 3,
    interval_s: float | str | None = None,
    time_unit: str = "auto",
    duplicates: str = "last",
    resample: str = "",
) -> tuple[CleanSeries, CleaningReport]:
    """Apply the rules above to the rows of ONE series (columns reading_time, value).

    `interval_s` (seconds or '60s'): the grid; without it the most common step is used.
    `resample` (last/mean) needs an interval: event-driven series become one value per interval.
    """
    if duplicates not in DUPLICATE_RULES:
        raise CleaningError(f"duplicates: {duplicates!r} is not one of {list(DUPLICATE_RULES)}")
    if resample not in RESAMPLE_METHODS:
        raise CleaningError(f"resample: {resample!r} is not one of {[m for m in RESAMPLE_METHODS if m]}")
    interval = parse_interval(interval_s) if interval_s else 0.0
    if resample and not interval:
        raise CleaningError("resample: needs a declared interval (e.g. interval: 60s)")
    report = CleaningReport(rows_in=len(rows), duplicates=duplicates, resample=resample)
    dropped = report.dropped
    times, bad_time, report.time_unit = parse_times(rows["reading_time"], time_unit)
    values, value_missing = _parse_numbers(rows["value"])
    keep = np.ones(len(rows), dtype=bool)

    def drop(reason: str, mask: np.ndarray) -> None:
        hit = keep & mask
        dropped[reason] = int(hit.sum())
        keep[hit] = False

    drop("bad_timestamp", bad_time | ~np.isfinite(times))
    drop("missing_value", value_missing)
    drop("non_numeric", ~np.isfinite(values))
    sentinel_values = np.array(list(sentinels), dtype=float)
    drop("sentinel", np.isin(values, sentinel_values) if sentinel_values.size else np.zeros_like(keep))

    t = np.floor(times[keep]).astype(np.int64)
    v = values[keep]
    running_max = np.maximum.accumulate(t) if t.size else t
    report.repaired["unsorted"] = int((t[1:] < running_max[:-1]).sum()) if t.size else 0
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    t, v, merged = _aggregate(t, v, t, duplicates)
    if duplicates == "last":
        dropped["duplicate_timestamp"] = merged
    else:
        report.repaired["duplicate_timestamp"] = merged
    carried = 0
    if resample:
        t, v, report.repaired["resampled"] = _aggregate(t, v, (t // int(interval)) * int(interval), resample)
        t, v, carried = _carry_forward(t, v, int(interval), max_gap_fill)
        report.repaired["carried_forward"] = carried

    series, filled_count, splits = _regularise(t, v, max_gap_fill, interval or None)
    report.repaired["gap_filled"] = filled_count
    report.repaired["gap_split"] = splits
    report.rows_out = len(series)
    report.interval_s = series.interval_s
    report.segments = int(series.segment[-1]) + 1 if len(series) else 0
    return series, report


def _aggregate(t: np.ndarray, v: np.ndarray, keys: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray, int]:
    """One reading per run of equal `keys` (t sorted): the last one or the mean; returns (t, v, #merged).

    The time kept is the key (a second, or an interval's start).
    """
    if t.size == 0:
        return t, v, 0
    starts = np.flatnonzero(np.append(True, keys[1:] != keys[:-1]))
    if rule == "last":
        ends = np.append(starts[1:], t.size) - 1
        out_v = v[ends]
    else:
        out_v = np.add.reduceat(v, starts) / np.diff(np.append(starts, t.size))
    return keys[starts].astype(np.int64), out_v.astype(np.float64), int(t.size - starts.size)


def _carry_forward(t: np.ndarray, v: np.ndarray, interval: int, max_gap: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Empty intervals (up to `max_gap` in a row) hold the previous value: no reading means no change.

    Only the past is used, so carried points can be inputs and targets without leaking anything.
    """
    if t.size < 2:
        return t, v, 0
    missing = (np.diff(t) // interval) - 1
    carry = np.where((missing > 0) & (missing <= max_gap), missing, 0)
    if not carry.any():
        return t, v, 0
    repeat = np.append(carry + 1, 1)
    out_v = np.repeat(v, repeat)
    out_t = np.repeat(t, repeat)
    offsets = np.concatenate([np.arange(r) for r in repeat])
    return out_t + offsets * interval, out_v, int(carry.sum())


def infer_interval(times: np.ndarray) -> float:
    """Sampling interval = the most common positive step (robust to gaps and jitter-free data)."""
    steps = np.diff(times)
    steps = steps[steps > 0]
    if steps.size == 0:
        return 0.0
    unique, counts = np.unique(steps, return_counts=True)
    return float(unique[np.argmax(counts)])


def _regularise(
    t: np.ndarray, v: np.ndarray, max_gap_fill: int, interval_s: float | None
) -> tuple[CleanSeries, int, int]:
    """Interpolate short gaps and split at long ones; returns the series, #filled rows, #splits."""
    interval = float(interval_s) if interval_s else infer_interval(t)
    if t.size < 2 or interval <= 0:
        empty = np.zeros(t.size, dtype=np.int32)
        return CleanSeries(t, v, empty, np.zeros(t.size, dtype=bool), interval), 0, 0
    out_t, out_v, out_seg, out_fill = [t[0]], [v[0]], [0], [False]
    segment, filled, splits = 0, 0, 0
    for i in range(1, t.size):
        missing = round((t[i] - t[i - 1]) / interval) - 1
        if missing > max_gap_fill:
            segment += 1
            splits += 1
        elif missing > 0:
            for k in range(1, missing + 1):
                frac = k / (missing + 1)
                out_t.append(round(t[i - 1] + frac * (t[i] - t[i - 1])))
                out_v.append(v[i - 1] + frac * (v[i] - v[i - 1]))
                out_seg.append(segment)
                out_fill.append(True)
            filled += missing
        out_t.append(t[i])
        out_v.append(v[i])
        out_seg.append(segment)
        out_fill.append(False)
    series = CleanSeries(
        np.asarray(out_t, dtype=np.int64),
        np.asarray(out_v, dtype=np.float64),
        np.asarray(out_seg, dtype=np.int32),
        np.asarray(out_fill, dtype=bool),
        interval,
    )
    return series, filled, splits
