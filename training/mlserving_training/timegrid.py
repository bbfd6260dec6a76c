"""Time-grid options of cleaning (units, same-second rule, resampling, interval text), without pandas.

Kept apart from cleaning.py so that the config (and `mlserving-train --help`) can validate them
without importing pandas.
"""

from __future__ import annotations

import math

#: Declarable timestamp units; "auto" picks one from the numbers' magnitude (or ISO text).
TIME_UNITS = ("auto", "s", "ms", "us", "ns", "iso")
#: How readings sharing one timestamp (second) become one: the last in file order, or their mean.
DUPLICATE_RULES = ("last", "mean")
#: How readings become one value per declared interval ("" = no resampling).
RESAMPLE_METHODS = ("", "last", "mean")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class CleaningError(ValueError):
    """A declared cleaning option that cannot work (unknown unit, bad interval); names the option."""


def parse_interval(text: str | float | int) -> float:
    """'60s', '30min', '1h', '1d' or a bare number of seconds -> seconds (> 0); '' -> 0 (infer)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        if not raw:
            return 0.0
        number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = raw[len(number) :] or "s"
        if unit not in _DURATION_UNITS:
            raise CleaningError(f"interval: {text!r} has unknown unit {unit!r}; use one of {sorted(_DURATION_UNITS)}")
        try:
            seconds = float(number) * _DURATION_UNITS[unit]
        except ValueError:
            raise CleaningError(f"interval: {text!r} is not a duration like 60s, 30min, 1h") from None
    if not math.isfinite(seconds) or seconds < 1:
        raise CleaningError(f"interval: {text!r} must be at least 1 second (timestamps are whole seconds)")
    return seconds
