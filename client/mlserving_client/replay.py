"""Replay a recorded series through the service, as the original tutorial's client did.

The CSV has the training data's columns (station_id, parameter_id, reading_time, value).
For each position t the last `window` readings up to t are sent as one request and the answer
is compared with the reading at t + 1, which the model did not see.
"""

from __future__ import annotations

import csv
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserving_client.client import Client, PredictionError
from mlserving_client.stats import LatencyRecorder, LatencySummary

COLUMNS = ("station_id", "parameter_id", "reading_time", "value")


class ReplayError(ValueError):
    """The CSV or the series selection cannot be replayed."""


@dataclass(frozen=True)
class Series:
    """One series of the file: `label` is station_id/parameter_id, as the trainer names it."""

    label: str
    times: list[str]
    values: list[float]


@dataclass(frozen=True)
class ReplayStep:
    index: int
    time: str
    forecast: float | None
    actual: float
    error: str | None
    mae: float | None
    version: str | None


@dataclass
class ReplaySummary:
    series: str
    window: int
    steps: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    abs_error_sum: float = 0.0
    sq_error_sum: float = 0.0
    versions: Counter[str] = field(default_factory=Counter)
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)

    @property
    def mae(self) -> float | None:
        return self.abs_error_sum / self.answered if self.answered else None

    @property
    def rmse(self) -> float | None:
        return math.sqrt(self.sq_error_sum / self.answered) if self.answered else None

    def to_dict(self) -> dict[str, Any]:
        latency: LatencySummary = self.latency.summary()
        return {
            "series": self.series,
            "window": self.window,
            "steps": self.steps,
            "answered": self.answered,
            "errors": dict(self.errors),
            "mae": self.mae,
            "rmse": self.rmse,
            "versions": dict(self.versions),
            "latency": latency.to_dict(),
        }


#: Values the recorders write for "no reading" (the trainer drops them too).
SENTINELS = frozenset({999999.0, -999999.0})


def read_series(path: str | Path, selector: str | None = None) -> Series:
    """Load one series, cleaned lightly: rows without a finite numeric value or with a sentinel
    are skipped, rows are ordered by time and the last of duplicate timestamps wins.

    `selector` is station_id/parameter_id or a station_id that has one parameter; without it
    the first series in sorted order is used, as the trainer does.
    """
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ReplayError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
            for row in reader:
                try:
                    value = float(row["value"])
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value) and value not in SENTINELS and row["reading_time"]:
                    groups[f"{row['station_id']}/{row['parameter_id']}"][row["reading_time"]] = value
    except OSError as exc:
        raise ReplayError(f"{path}: {exc.strerror}") from None
    if not groups:
        raise ReplayError(f"{path}: no readings")
    label = _select(groups, selector, path)
    times = sorted(groups[label], key=_time_key)
    return Series(label, [_show_time(t) for t in times], [groups[label][t] for t in times])


def _time_key(text: str) -> tuple[int, float, str]:
    """Numeric timestamps (unix seconds) sort as numbers, anything else as text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _show_time(text: str) -> str:
    try:
        seconds = float(text)
    except ValueError:
        return text
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _select(groups: dict[str, Any], selector: str | None, path: str | Path) -> str:
    if selector is None:
        return min(groups)
    if selector in groups:
        return selector
    matches = [k for k in groups if k.split("/", 1)[0] == selector]
    if len(matches) == 1:
        return matches[0]
    raise ReplayError(
        f"series: {selector!r} {'is ambiguous' if matches else 'not found'} in {path}; "
        f"choose one of {', '.join(sorted(groups)[:20])}"
    )


def windows(values: list[float], window: int) -> Iterator[tuple[int, list[float], float]]:
    """(index of the actual, the `window` readings before it, the actual)."""
    for t in range(window, len(values)):
        yield t, values[t - window : t], values[t]


def replay(
    client: Client,
    series: Series,
    window: int,
    *,
    rate: float | None = None,
    limit: int | None = None,
    model: str | None = None,
    timeout: float | None = None,
    on_step: Callable[[ReplayStep], None] | None = None,
) -> ReplaySummary:
    """Send every window in order (at most `rate` per second) and score each forecast."""
    if window < 1:
        raise ReplayError(f"window: {window} must be >= 1")
    if len(series.values) <= window:
        raise ReplayError(f"series {series.label}: {len(series.values)} readings, need more than window={window}")
    summary = ReplaySummary(series.label, window)
    start = time.monotonic()
    for n, (t, history, actual) in enumerate(windows(series.values, window)):
        if limit is not None and n >= limit:
            break
        if rate:
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        summary.steps += 1
        forecast: float | None = None
        error: str | None = None
        version: str | None = None
        try:
            answer = client.predict(history, timeout=timeout, model=model)
            forecast = float(answer.value[0] if isinstance(answer.value, list) else answer.value)
            version = f"{answer.model}:{answer.version}"
            summary.answered += 1
            summary.abs_error_sum += abs(forecast - actual)
            summary.sq_error_sum += (forecast - actual) ** 2
            summary.versions[version] += 1
            summary.latency.add(int(answer.latency_s * 1e9))
        except PredictionError as exc:
            error = exc.code
            summary.errors[exc.code] += 1
        except TimeoutError:
            error = "timeout"
            summary.errors["timeout"] += 1
        if on_step is not None:
            on_step(ReplayStep(n, series.times[t], forecast, actual, error, summary.mae, version))
    return summary


def plot(steps: list[ReplayStep], label: str, out: str | Path) -> None:
    """Forecasts against actuals, saved as an image (matplotlib is only needed here)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ReplayError(f"--plot needs matplotlib ({exc})") from None
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot([s.index for s in steps], [s.actual for s in steps], label="actual", linewidth=1.2)
    answered = [(s.index, s.forecast) for s in steps if s.forecast is not None]
    ax.plot([i for i, _ in answered], [f for _, f in answered], label="forecast", linewidth=1.2)
    ax.set_title(f"{label}: one-step forecasts vs actuals")
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
