"""Calendar inputs (time of day, day of week as sin/cos), computed the same way by trainer and server.

A calendar model's input row is its z-scored window followed by these features of the time of
the first forecast step, i.e. the last reading's time + the package's `calendar.interval_s`.
Both sides call `calendar_features` on float64 unix seconds, so the numbers a model was trained
on and the ones the server feeds it are the same to the last bit. Times are UTC; a series in
local time can be given local-time "unix" stamps (docs/model-package.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
#: 1970-01-01 was a Thursday; the week phase is 0 at Monday 00:00 UTC.
_MONDAY_OFFSET_S = 4 * DAY_S
#: Every feature a package may declare, in the order the trainer writes them.
CALENDAR_FEATURES = ("day_sin", "day_cos", "week_sin", "week_cos")


def calendar_features(target_times: np.ndarray | Sequence[float], names: Sequence[str]) -> np.ndarray:
    """(n, len(names)) float32 features of each forecast-step time (unix seconds)."""
    t = np.asarray(target_times, dtype=np.float64).reshape(-1)
    day = 2.0 * np.pi * (np.mod(t, DAY_S) / DAY_S)
    week = 2.0 * np.pi * (np.mod(t - _MONDAY_OFFSET_S, WEEK_S) / WEEK_S)
    columns = {"day_sin": np.sin(day), "day_cos": np.cos(day), "week_sin": np.sin(week), "week_cos": np.cos(week)}
    out = np.empty((len(t), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        out[:, j] = columns[name]
    return out


def features_after(last_times: np.ndarray | Sequence[float], interval_s: float, names: Sequence[str]) -> np.ndarray:
    """Features of the step after each last reading: what a request's `time` turns into."""
    return calendar_features(np.asarray(last_times, dtype=np.float64) + float(interval_s), names)
