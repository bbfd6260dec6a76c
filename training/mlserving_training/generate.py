"""Deterministic BTS-like data: the real BTS sample may not be redistributed, this may.

Each station's grid load is a base level with daily and weekly seasonality, AR(1) noise and
occasional level shifts; then the same kinds of dirt as the real data are injected (gaps,
sentinels, missing and non-numeric values, duplicate and out-of-order rows), so that every
cleaning rule has work to do. Same arguments, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: 2024-01-01T00:00:00Z, a Monday: weekly seasonality lines up with calendar weeks.
DEFAULT_START = 1_704_067_200
DEFAULT_PARAMETER = "1"


@dataclass(frozen=True)
class DirtRates:
    """Fractions of rows affected; zero everywhere gives clean data."""

    sentinel: float = 0.004
    missing: float = 0.003
    non_numeric: float = 0.002
    duplicate: float = 0.004
    swapped: float = 0.004
    short_gaps_per_30d: float = 3.0
    long_gaps_per_30d: float = 0.5


CLEAN = DirtRates(0, 0, 0, 0, 0, 0, 0)


def station_signal(rng: np.random.Generator, times: np.ndarray, station: int) -> np.ndarray:
    """Grid load in kW for one station: what a forecaster should learn."""
    level = 20.0 + 8.0 * station + rng.uniform(0.0, 5.0)
    hours = (times - DEFAULT_START) / 3600.0
    daily_phase = rng.uniform(-2.0, 2.0)
    daily = 0.25 * np.sin(2 * np.pi * (hours - 9.0 - daily_phase) / 24.0) + 0.08 * np.sin(4 * np.pi * hours / 24.0)
    day_of_week = (hours // 24) % 7
    weekly = np.where(day_of_week >= 5, -0.12, 0.02) + 0.03 * np.sin(2 * np.pi * hours / (24 * 7))
    noise = np.empty(times.size)
    shocks = rng.normal(0.0, 0.025, times.size)
    noise[0] = shocks[0]
    for i in range(1, times.size):
        noise[i] = 0.8 * noise[i - 1] + shocks[i]
    shift = np.zeros(times.size)
    for _ in range(rng.integers(1, 3)):
        at = rng.integers(times.size // 5, times.size)
        shift[at:] += rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.18)
    return level * (1.0 + daily + weekly + shift + noise)


def inject_level_shift(values: np.ndarray, shift: float, last: int) -> np.ndarray:
    """The newest `last` readings moved by `shift` x the mean level before them."""
    out = np.array(values, dtype=np.float64)
    at = len(out) - last
    out[at:] += shift * float(np.mean(out[:at]))
    return out


def _dirty_rows(
    rng: np.random.Generator,
    station: str,
    parameter: str,
    times: np.ndarray,
    values: np.ndarray,
    rates: DirtRates,
    interval_s: int,
) -> list[tuple[str, str, int, str]]:
    n = times.size
    keep = np.ones(n, dtype=bool)
    months = n * interval_s / (30 * 86400)
    for count, low, high in ((rates.short_gaps_per_30d, 1, 3), (rates.long_gaps_per_30d, 6, 48)):
        for _ in range(round(count * months)):
            start = rng.integers(1, max(2, n - high - 1))
            keep[start : start + rng.integers(low, high + 1)] = False
    text = np.array([f"{x:.3f}" for x in values], dtype=object)
    tokens = [("999999", rates.sentinel), ("", rates.missing), ("ERR", rates.non_numeric)]
    counts = [_count(rate, n) for _, rate in tokens]
    spots = rng.choice(n, size=min(sum(counts), n), replace=False)
    for (token, _), chunk in zip(tokens, np.split(spots, np.cumsum(counts)[:-1]), strict=True):
        text[chunk] = token
    rows = [(station, parameter, int(times[i]), text[i]) for i in range(n) if keep[i]]
    for i in sorted(rng.choice(len(rows), size=_count(rates.duplicate, len(rows)), replace=False), reverse=True):
        rows.insert(int(i) + 1, rows[int(i)])
    for i in rng.choice(len(rows) - 1, size=_count(rates.swapped, len(rows) - 1), replace=False):
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    return rows


def _count(rate: float, n: int) -> int:
    """Exact number of rows to spoil: at least one whenever the rate is positive, so every rule has work."""
    return min(n, max(1, round(rate * n))) if rate > 0 else 0


def generate_bts(
    stations: int = 3,
    days: int = 120,
    seed: int = 0,
    interval_s: int = 3600,
    start: int = DEFAULT_START,
    rates: DirtRates = DirtRates(),
    shift: float = 0.0,
    shift_days: int = 0,
) -> pd.DataFrame:
    """Rows in file order (by time, stations interleaved), all cells as text like a CSV.

    `shift` injects a level shift into the newest `shift_days` of every station (e.g. 0.3 = the
    level jumps by 30 % of the mean before it): the drift that live accuracy and PSI must catch.
    Without it the bytes are exactly those of earlier versions.
    """
    if stations < 1 or days < 1 or interval_s < 1:
        raise ValueError("stations, days and interval_s must be >= 1")
    if shift and not 0 < shift_days < days:
        raise ValueError("shift_days must be in 1..days-1 when shift is set")
    times = start + interval_s * np.arange(days * 86400 // interval_s, dtype=np.int64)
    rows: list[tuple[str, str, int, str]] = []
    for station in range(stations):
        rng = np.random.default_rng([seed, station])
        station_id = f"BTS{station + 1:03d}"
        values = station_signal(rng, times, station)
        if shift:
            values = inject_level_shift(values, shift, shift_days * 86400 // interval_s)
        rows += _dirty_rows(rng, station_id, DEFAULT_PARAMETER, times, values, rates, interval_s)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][2] // (interval_s * 24), rows[i][0], i))
    frame = pd.DataFrame([rows[i] for i in order], columns=["station_id", "parameter_id", "reading_time", "value"])
    frame["reading_time"] = frame["reading_time"].astype(str)
    return frame


def write_csv(frame: pd.DataFrame, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
