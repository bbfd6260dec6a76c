"""Honest baselines and a rolling-origin backtest: what a model must beat before it is worth a pod.

Baselines, each scored on exactly the targets the model is scored on (one-step-ahead):

    naive            the last reading
    seasonal_day     the reading one day earlier (when the interval divides a day)
    seasonal_week    the reading one week earlier (when the history before the targets holds 2 weeks)
    linear_ar        ordinary least squares on the model's own inputs (its window, plus its
                     calendar features if it has them) and an intercept
    linear_ar_week   the same plus the two weekly lags (a week and a week minus one reading earlier)

Lags are looked up by time, not by position, so a gap-split series never pairs a target with the
wrong reading; a lag that is missing or was interpolated (it may hold the target's future) does not
count. A baseline that is undefined on more than `MAX_UNDEFINED` of the targets is left out (named
in `skipped`); the others are all scored on the targets where every kept one is defined.

Backtest: the targets are cut into k consecutive folds (rolling origin). At each fold's origin the
linear ARs are refitted on every window before it (expanding window), and so is a model of a kind
in REFIT_KINDS (the linear package: least squares, milliseconds; `rolling_linear`). The networks
(lstm, ann, hybrid) are trained once on the train split and scored on each fold as they are:
refitting one per fold costs k trainings per gate (docs/training.md, "Backtest"). Mean and spread
of MAE over the folds are reported and are what the gate compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlserving_training.cleaning import CleanSeries
from mlserving_training.evaluate import error_metrics, smape
from mlserving_training.features import calendar_inputs

DAY_S = 86_400
WEEK_S = 7 * DAY_S
#: A baseline undefined (no lag) on more than this share of the targets is not reported.
MAX_UNDEFINED = 0.05
DEFAULT_FOLDS = 5
MIN_FOLD_TARGETS = 10


def seasonal_periods(interval_s: float) -> dict[str, int]:
    """Readings per day and per week, for intervals that divide a day (30 min -> 48 and 336)."""
    if interval_s <= 0 or DAY_S % interval_s or DAY_S / interval_s < 2:
        return {}
    day = int(DAY_S // interval_s)
    return {"day": day, "week": 7 * day}


def mase_scale(in_sample: np.ndarray, interval_s: float) -> tuple[float, int]:
    """MASE's denominator, the one every MASE of the project divides by: the MAE of the seasonal
    naive on the in-sample readings (those before the scored ones), the season a week when they
    hold two, else a day, else one reading. Returns (scale, period in readings)."""
    values = np.asarray(in_sample, dtype=np.float64)
    periods = seasonal_periods(interval_s)
    period = next((p for p in (periods.get("week"), periods.get("day")) if p and len(values) > 2 * p), 1)
    if len(values) <= period:
        return math.nan, period
    return float(np.mean(np.abs(values[period:] - values[:-period]))), period


def lag_values(series: CleanSeries, targets: np.ndarray, lag_s: float) -> np.ndarray:
    """Raw reading `lag_s` seconds before each target (NaN where absent or interpolated)."""
    wanted = series.times[targets] - round(lag_s)
    pos = np.clip(np.searchsorted(series.times, wanted), 0, len(series) - 1)
    ok = (series.times[pos] == wanted) & ~series.filled[pos]
    out = np.full(len(targets), np.nan)
    out[ok] = series.values[pos[ok]]
    return out


def valid_targets(series: CleanSeries, window: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Indices in [lo, hi) usable as targets with `window` readings before them in one segment."""
    hi = len(series) if hi is None else hi
    targets = np.arange(max(lo, window), hi)
    ok = (series.segment[targets] == series.segment[targets - window]) & series.target_ok[targets]
    return targets[ok]


def windows(series: CleanSeries, targets: np.ndarray, window: int) -> np.ndarray:
    """(n, window) raw readings just before each target, oldest first."""
    return np.asarray(series.values, dtype=np.float64)[targets[:, None] + np.arange(-window, 0)[None, :]]


@dataclass(frozen=True)
class Design:
    """Regressors of the linear ARs for a set of targets: window, calendar, weekly lags."""

    base: np.ndarray  # (n, window + calendar)
    week: np.ndarray | None  # (n, 2) or None

    def matrix(self, weekly: bool) -> np.ndarray:
        parts = [self.base] + ([self.week] if weekly and self.week is not None else [])
        return np.hstack([*parts, np.ones((len(self.base), 1))])


def _design(
    series: CleanSeries, targets: np.ndarray, window: int, calendar: dict | None, periods: dict[str, int]
) -> Design:
    base = windows(series, targets, window)
    extra = calendar_inputs(series.times[targets - 1], calendar)
    if extra is not None:
        base = np.hstack([base, extra])
    week = None
    if "week" in periods:
        step = series.interval_s
        week = np.column_stack(
            [
                lag_values(series, targets, (periods["week"] - 1) * step),
                lag_values(series, targets, periods["week"] * step),
            ]
        )
    return Design(base, week)


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ok = np.all(np.isfinite(x), axis=1)
    coef, *_ = np.linalg.lstsq(x[ok], y[ok], rcond=None)
    return coef


@dataclass
class Comparison:
    """Every candidate (the model and each baseline) on the same targets, overall and per fold."""

    targets: np.ndarray
    actual: np.ndarray
    forecasts: dict[str, np.ndarray]
    folds: list[np.ndarray]  # index arrays into targets
    scale: float
    scale_period: int
    skipped: dict[str, str] = field(default_factory=dict)

    def metrics(self, name: str) -> dict[str, Any]:
        predicted = self.forecasts[name]
        base = error_metrics(self.actual, predicted)
        fold_mae = [float(np.mean(np.abs(predicted[f] - self.actual[f]))) for f in self.folds]
        return {
            "mae": base["mae"],
            "rmse": base["rmse"],
            "mase": base["mae"] / self.scale if self.scale > 0 else math.inf,
            "smape": smape(self.actual, predicted),
            "backtest_mae": fold_mae,
            "backtest_mae_mean": float(np.mean(fold_mae)),
            "backtest_mae_std": float(np.std(fold_mae)),
        }

    @property
    def baselines(self) -> list[str]:
        return [name for name in self.forecasts if name != "model"]

    def best_baseline(self) -> str:
        return min(self.baselines, key=lambda n: self.metrics(n)["backtest_mae_mean"])

    def to_dict(self) -> dict[str, Any]:
        table = {name: self.metrics(name) for name in self.forecasts}
        best = self.best_baseline()
        model = table.get("model")
        return {
            "targets": len(self.targets),
            "folds": len(self.folds),
            "mase_scale": self.scale,
            "mase_period": self.scale_period,
            "candidates": table,
            "skipped": dict(self.skipped),
            "best_baseline": best,
            "model_beats_every_baseline": None
            if model is None
            else all(model["backtest_mae_mean"] < table[b]["backtest_mae_mean"] for b in self.baselines),
        }


def compare(
    series: CleanSeries,
    targets: np.ndarray,
    window: int,
    fit_before: int,
    model_forecast: np.ndarray | None = None,
    calendar: dict | None = None,
    folds: int = DEFAULT_FOLDS,
) -> Comparison:
    """Score the model (raw forecasts for `targets`, optional) and every baseline on `targets`.

    `fit_before`: series index before which the linear ARs may learn (the start of the holdout),
    and the in-sample readings of MASE.
    """
    targets = np.asarray(targets, dtype=np.int64)
    values = np.asarray(series.values, dtype=np.float64)
    periods = seasonal_periods(series.interval_s)
    history = int(targets[0]) if len(targets) else 0
    if "week" in periods and history < 2 * periods["week"]:
        periods = {"day": periods["day"]}
    step = series.interval_s
    forecasts: dict[str, np.ndarray] = {"naive": values[targets - 1]}
    skipped: dict[str, str] = {}
    for name in ("day", "week"):
        if name in periods:
            forecasts[f"seasonal_{name}"] = lag_values(series, targets, periods[name] * step)
        else:
            skipped[f"seasonal_{name}"] = f"interval {step:g}s: not enough history or no whole {name}"

    fold_index = _folds(len(targets), folds)
    for name, weekly in (("linear_ar", False), ("linear_ar_week", True)):
        if weekly and "week" not in periods:
            skipped[name] = "no weekly lags (needs 2 weeks of history)"
            continue
        if weekly and window >= periods["week"]:
            skipped[name] = f"the window ({window}) already holds the weekly lags: same as linear_ar"
            continue
        forecasts[name] = rolling_linear(series, targets, window, fit_before, calendar, folds, weekly)

    keep = np.ones(len(targets), dtype=bool)
    for name in list(forecasts):
        defined = np.isfinite(forecasts[name])
        if (~defined).mean() > MAX_UNDEFINED:
            skipped[name] = f"undefined on {(~defined).mean():.0%} of the targets (missing lags)"
            del forecasts[name]
        else:
            keep &= defined
    if model_forecast is not None:
        forecasts = {"model": np.asarray(model_forecast, dtype=np.float64), **forecasts}
    forecasts = {name: f[keep] for name, f in forecasts.items()}
    kept = np.flatnonzero(keep)
    fold_index = [np.flatnonzero(np.isin(kept, f)) for f in fold_index]
    fold_index = [f for f in fold_index if len(f)]
    scale, scale_period = mase_scale(values[:fit_before], step)
    return Comparison(targets[keep], values[targets[keep]], forecasts, fold_index, scale, scale_period, skipped)


def _folds(n: int, k: int) -> list[np.ndarray]:
    k = max(1, min(k, n // MIN_FOLD_TARGETS)) if n >= MIN_FOLD_TARGETS else 1
    return [f for f in np.array_split(np.arange(n), k) if len(f)]


#: Model kinds the backtest refits at each fold's origin, like the linear_ar baselines.
REFIT_KINDS = ("linear",)


def rolling_linear(
    series: CleanSeries,
    targets: np.ndarray,
    window: int,
    fit_before: int,
    calendar: dict | None = None,
    folds: int = DEFAULT_FOLDS,
    weekly: bool = False,
) -> np.ndarray:
    """Least-squares AR forecasts for `targets` on the inputs of a model (its window, calendar and,
    `weekly`, the two weekly lags), refitted at each of the `folds` origins on every window before
    it: the linear_ar baselines, and a linear package's backtest (REFIT_KINDS)."""
    periods = seasonal_periods(series.interval_s)
    train_targets = valid_targets(series, window, 0, fit_before)
    train_design = _design(series, train_targets, window, calendar, periods)
    design = _design(series, np.asarray(targets, dtype=np.int64), window, calendar, periods)
    return _rolling_ar(series, train_targets, train_design, targets, design, _folds(len(targets), folds), weekly)


def _rolling_ar(
    series: CleanSeries,
    train_targets: np.ndarray,
    train_design: Design,
    targets: np.ndarray,
    design: Design,
    folds: list[np.ndarray],
    weekly: bool,
) -> np.ndarray:
    values = np.asarray(series.values, dtype=np.float64)
    x_hist, y_hist = train_design.matrix(weekly), values[train_targets]
    x_all, y_all = design.matrix(weekly), values[targets]
    out = np.full(len(targets), np.nan)
    for fold in folds:
        earlier = np.arange(fold[0])
        coef = _fit(np.vstack([x_hist, x_all[earlier]]), np.concatenate([y_hist, y_all[earlier]]))
        out[fold] = x_all[fold] @ coef  # NaN where a weekly lag is missing
    return out


#: The baseline a model kind IS (a linear AR package is the linear_ar baseline, exported so it can
#: serve): it is not asked to beat itself, only every other baseline.
SELF_BASELINE = {"linear": "linear_ar"}


def rivals(table: dict[str, Any], model_kind: str = "") -> list[str]:
    """The baselines a model of `model_kind` must beat."""
    return [name for name in table["candidates"] if name not in ("model", SELF_BASELINE.get(model_kind))]


#: How to serve a baseline as a package (the linear kind exports a linear AR to TFLite).
SERVE_HINT = {
    "linear_ar": " (mlserving-train train --model linear, same --window)",
    "linear_ar_week": " (mlserving-train train --model linear with a --window of a week + 1 readings)",
}


def verdict(table: dict[str, Any], margin: float = 0.0, model_kind: str = "") -> tuple[bool, str]:
    """Does the model beat every baseline by `margin` on the backtest mean? And what to do if not."""
    candidates = table["candidates"]
    model = candidates["model"]["backtest_mae_mean"]
    factor = 1.0 - margin
    losers = [name for name in rivals(table, model_kind) if not model < candidates[name]["backtest_mae_mean"] * factor]
    if not losers:
        return True, (
            f"model beats every baseline by >= {margin:.0%} on the backtest"
            f" (MAE {model:.4g} vs best baseline {table['best_baseline']}"
            f" {candidates[table['best_baseline']]['backtest_mae_mean']:.4g})"
        )
    best = table["best_baseline"]
    return False, (
        f"model loses to {', '.join(losers)} (backtest MAE {model:.4g} vs {best}"
        f" {candidates[best]['backtest_mae_mean']:.4g}, margin {margin:.0%}):"
        f" serve the {best} baseline instead{SERVE_HINT.get(best, '')}"
    )


def table_lines(table: dict[str, Any]) -> list[str]:
    """The comparison as aligned text lines for the CLI (the Markdown report has the same columns)."""
    lines = [
        f"baselines on {table['targets']} test targets, backtest {table['folds']} fold(s);"
        f" MASE scale: in-sample seasonal naive, period {table['mase_period']} ({table['mase_scale']:.4g})"
    ]
    lines.append(f"  {'candidate':<16}{'MAE':>11}{'RMSE':>11}{'MASE':>8}{'sMAPE%':>8}{'backtest MAE mean±std':>26}")
    for name, m in table["candidates"].items():
        lines.append(
            f"  {name:<16}{m['mae']:>11.4f}{m['rmse']:>11.4f}{m['mase']:>8.3f}{m['smape']:>8.2f}"
            f"{m['backtest_mae_mean']:>15.4f} ± {m['backtest_mae_std']:<8.4f}"
        )
    for name, why in table["skipped"].items():
        lines.append(f"  {name:<16}skipped: {why}")
    return lines
