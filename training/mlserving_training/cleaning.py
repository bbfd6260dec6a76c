"""Cleaning rules for one raw BTS series; every dropped or repaired row is counted by reason.

Rules, in the order they run (docs/training.md explains why each exists):

1. bad_timestamp        reading_time empty or not a finite number       -> row dropped
2. missing_value        value empty, "nan", "null", "NA", "None"        -> row dropped
3. non_numeric          value not a number (e.g. "ERR") or infinite     -> row dropped
4. sentinel             value equal to a sentinel (999999, -999999)     -> row dropped
5. unsorted             row earlier than a row above it in the file     -> rows sorted by time
6. duplicate_timestamp  same reading_time as a later row                -> earlier ones dropped (last wins)
7. gap_filled           up to `max_gap_fill` missing readings in a row  -> linearly interpolated
8. gap_split            longer gaps                                     -> series split into segments;
                                                                           no window crosses a split
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MISSING_TOKENS = frozenset({"", "nan", "null", "na", "n/a", "none"})
DEFAULT_SENTINELS = (999999.0, -999999.0)


@dataclass
class CleaningReport:
    rows_in: int = 0
    rows_out: int = 0
    interval_s: float = 0.0
    segments: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "interval_s": self.interval_s,
            "segments": self.segments,
            "dropped": dict(self.dropped),
            "repaired": dict(self.repaired),
        }

    def lines(self) -> list[str]:
        """Human-readable report, one line per reason, for the CLI."""
        out = [f"cleaning: {self.rows_in} rows in, {self.rows_out} rows out, interval {self.interval_s:g}s,"
               f" {self.segments} segment(s)"]
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
    interval_s: float | None = None,
) -> tuple[CleanSeries, CleaningReport]:
    """Apply the rules above to the rows of ONE series (columns reading_time, value)."""
    report = CleaningReport(rows_in=len(rows))
    dropped = report.dropped
    times, bad_time_missing = _parse_numbers(rows["reading_time"])
    values, value_missing = _parse_numbers(rows["value"])
    keep = np.ones(len(rows), dtype=bool)

    def drop(reason: str, mask: np.ndarray) -> None:
        hit = keep & mask
        dropped[reason] = int(hit.sum())
        keep[hit] = False

    drop("bad_timestamp", bad_time_missing | ~np.isfinite(times))
    drop("missing_value", value_missing)
    drop("non_numeric", ~np.isfinite(values))
    sentinel_values = np.array(list(sentinels), dtype=float)
    drop("sentinel", np.isin(values, sentinel_values) if sentinel_values.size else np.zeros_like(keep))

    t = times[keep].astype(np.int64)
    v = values[keep]
    running_max = np.maximum.accumulate(t) if t.size else t
    report.repaired["unsorted"] = int((t[1:] < running_max[:-1]).sum()) if t.size else 0
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    # Last in file order wins: after a stable sort, it is the last of each run of equal times.
    last_of_run = np.append(t[1:] != t[:-1], True) if t.size else np.zeros(0, dtype=bool)
    dropped["duplicate_timestamp"] = int((~last_of_run).sum())
    t, v = t[last_of_run], v[last_of_run]

    series, filled_count, splits = _regularise(t, v, max_gap_fill, interval_s)
    report.repaired["gap_filled"] = filled_count
    report.repaired["gap_split"] = splits
    report.rows_out = len(series)
    report.interval_s = series.interval_s
    report.segments = int(series.segment[-1]) + 1 if len(series) else 0
    return series, report


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
        missing = int(round((t[i] - t[i - 1]) / interval)) - 1
        if missing > max_gap_fill:
            segment += 1
            splits += 1
        elif missing > 0:
            for k in range(1, missing + 1):
                frac = k / (missing + 1)
                out_t.append(int(round(t[i - 1] + frac * (t[i] - t[i - 1]))))
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
