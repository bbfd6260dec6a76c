"""The quality gate: a retrained model is published only if it is measurably better.

Candidate, serving version and naive forecast are scored on the SAME holdout: the newest
readings of the series the candidate was trained on (its test split), each model with LiteRT
(what serves) and its own normalisation and window. The candidate passes when

    candidate MAE <= serving MAE  x (1 - margin)   (skipped when nothing serves yet)
    candidate MAE <  naive MAE    x (1 - margin)
    candidate MAE <  baseline MAE x (1 - margin)   for every baseline (mlserving_training.baselines:
                                                    seasonal naives, linear ARs on the same inputs)

MAE here is the mean over the rolling-origin backtest folds of the holdout. Every door applies
this one gate (`retrain.evaluate_gate`): the CronJob and auto-promotion (`retrain`), `publish
--promote`, `promote` and the demo packages (`quick`). An override (`--force`, or `gate: false`
for the CronJob) is logged as `gate_forced` and recorded in the published version's metadata.gate
(`override`, `publish_on_record`). A refusal is a normal outcome, not an error: the caller
publishes nothing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlserving_common.logs import event
from mlserving_common.package import METADATA_FILE, MODEL_FILE, read_metadata, verify_package
from mlserving_common.registry import Registry
from mlserving_training import baselines
from mlserving_training.cleaning import CleanSeries
from mlserving_training.features import calendar_inputs, denormalize, normalize, split_bounds
from mlserving_training.runtime import predict_tflite

log = logging.getLogger("mlserving.training.gate")


class GateError(ValueError):
    """The gate cannot compare (e.g. no holdout windows); the run fails rather than guessing."""


class GateRefused(RuntimeError):
    """A door that must produce a serving version (the demo packages) was refused by the gate."""


@dataclass(frozen=True)
class Holdout:
    """Target readings of the newest split; every model sees the readings just before each target."""

    values: np.ndarray  # raw readings of the clean series
    targets: np.ndarray  # indices into values

    def __len__(self) -> int:
        return len(self.targets)

    def windows(self, window: int) -> np.ndarray:
        """(n, window) raw inputs, oldest first, ending right before each target."""
        offsets = np.arange(-window, 0)
        return self.values[self.targets[:, None] + offsets[None, :]]

    @property
    def actual(self) -> np.ndarray:
        return self.values[self.targets]

    @property
    def naive(self) -> np.ndarray:
        return self.values[self.targets - 1]


def build_holdout(series: CleanSeries, train_fraction: float, val_fraction: float, window: int) -> Holdout:
    """Targets of the test split whose `window` preceding readings lie in the split and one segment.

    With the candidate's own window these are exactly the targets of its test split; a larger
    window (a serving model that needs more readings) drops the first few.
    """
    n = len(series)
    _, start = split_bounds(n, train_fraction, val_fraction)
    targets = np.arange(start + window, n)
    ok = (series.segment[targets] == series.segment[targets - window]) & series.target_ok[targets]
    targets = targets[ok]
    if targets.size == 0:
        raise GateError(f"no holdout windows of {window} readings in the newest {n - start} readings")
    return Holdout(np.asarray(series.values, dtype=np.float64), targets)


def package_forecast(package_dir: Path, holdout: Holdout, times: np.ndarray | None = None) -> np.ndarray:
    """A package's one-step forecasts (raw units; a day-ahead model's first step) for the holdout's
    targets, run with LiteRT; `times` (the series' times) feeds a calendar model its inputs."""
    metadata = verify_package(package_dir)
    x = normalize(holdout.windows(metadata.window), metadata.normalization)
    if metadata.calendar:
        if times is None:
            raise GateError(f"{package_dir}: a calendar model needs the readings' times")
        extra = calendar_inputs(np.asarray(times)[holdout.targets - 1], metadata.calendar)
        x = x if extra is None else np.hstack([x, extra])
    predicted = np.asarray(predict_tflite(Path(package_dir) / MODEL_FILE, x.astype(np.float32)))
    first = predicted if predicted.ndim == 1 else predicted.reshape(len(holdout), -1)[:, 0]
    return denormalize(first, metadata.normalization)


def backtest_forecast(
    package_dir: Path, holdout: Holdout, series: CleanSeries, fit_before: int, folds: int
) -> np.ndarray:
    """What the backtest scores for a package: a kind in baselines.REFIT_KINDS refitted at each fold's
    origin on every earlier window (as the linear_ar baselines are), any other as trained."""
    metadata = verify_package(package_dir)
    if metadata.training.get("model") in baselines.REFIT_KINDS:
        return baselines.rolling_linear(
            series, holdout.targets, metadata.window, fit_before, metadata.calendar or None, folds
        )
    return package_forecast(package_dir, holdout, series.times)


def package_mae(package_dir: Path, holdout: Holdout, times: np.ndarray | None = None) -> float:
    """MAE in raw units of a package's .tflite on the holdout, run with LiteRT."""
    return float(np.mean(np.abs(package_forecast(package_dir, holdout, times) - holdout.actual)))


def naive_mae(holdout: Holdout) -> float:
    return float(np.mean(np.abs(holdout.naive - holdout.actual)))


@dataclass(frozen=True)
class GateDecision:
    """Every figure the decision used; logged as one JSON event and one human line."""

    passed: bool
    reason: str
    candidate_mae: float
    naive_mae: float
    serving_mae: float | None
    serving_version: str | None
    margin: float
    windows: int
    #: Backtest MAE of every baseline the candidate had to beat (naive included), by name.
    baselines: dict[str, float] = field(default_factory=dict)
    #: Promoted although refused (`publish --promote --force`); on record in metadata.gate.
    forced: bool = False

    @property
    def admitted(self) -> bool:
        """Passed, or forced over a refusal: either way it may serve, and metadata.gate says which."""
        return self.passed or self.forced

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        serving = (
            f"serving {self.serving_version} MAE {self.serving_mae:.4f}"
            if self.serving_mae is not None
            else "nothing serving yet"
        )
        verdict = "FORCED" if self.forced else "PASS" if self.passed else "REFUSED"
        others = "".join(f" | {name} {mae:.4f}" for name, mae in self.baselines.items() if name != "naive")
        return (
            f"gate {verdict}: candidate MAE {self.candidate_mae:.4f} | {serving} | naive MAE {self.naive_mae:.4f}"
            f"{others} | margin {self.margin:g} | {self.windows} holdout windows | {self.reason}"
        )


def decide(
    candidate: float,
    naive: float,
    serving: float | None,
    margin: float,
    serving_version: str | None = None,
    windows: int = 0,
    baselines: Mapping[str, float] | None = None,
) -> GateDecision:
    """Apply the rules; the reason names the rule that failed (the best baseline to serve instead),
    or what passed. `baselines`: the other baselines' MAE by name (naive is always one)."""
    factor = 1.0 - margin
    every = {"naive": naive, **{k: float(v) for k, v in (baselines or {}).items() if k != "naive"}}

    def outcome(passed: bool, reason: str) -> GateDecision:
        return GateDecision(passed, reason, candidate, naive, serving, serving_version, margin, windows, every)

    naive_limit = naive * factor
    beaten_by = {name: mae for name, mae in every.items() if not candidate < mae * factor}
    if beaten_by:
        best = min(beaten_by, key=beaten_by.__getitem__)
        limit = beaten_by[best] * factor
        return outcome(
            False,
            (
                f"does not beat {', '.join(beaten_by)}: {candidate:.4f} >= {best} {beaten_by[best]:.4f} x {factor:g}"
                f" = {limit:.4f}; serve the {best} baseline instead"
            ),
        )
    if serving is None:
        return outcome(
            True,
            f"beats naive ({candidate:.4f} < {naive_limit:.4f}) and every baseline"
            f" ({len(every)}); no version serving yet",
        )
    serving_limit = serving * factor
    if not candidate <= serving_limit:
        return outcome(
            False,
            (
                f"not better than serving {serving_version}: {candidate:.4f} > {serving:.4f} x {factor:g}"
                f" = {serving_limit:.4f}"
            ),
        )
    return outcome(
        True,
        (
            f"beats serving {serving_version} ({candidate:.4f} <= {serving_limit:.4f}) and naive"
            f" ({candidate:.4f} < {naive_limit:.4f}) and every baseline ({len(every)})"
        ),
    )


def override(decision: GateDecision, why: str, **context: Any) -> GateDecision:
    """The operator's override (`--force`, `gate: false`): a refusal becomes `forced` (still not
    `passed`), logged as `gate_forced` with every figure; a pass only says it was not needed."""
    if decision.passed:
        return replace(decision, reason=f"{why} (not needed); {decision.reason}")
    forced = replace(decision, forced=True, reason=f"{why}, forced over a refusal: {decision.reason}")
    event(log, "gate_forced", **context, **forced.to_dict())
    return forced


def publish_on_record(
    package_dir: Path,
    decision: GateDecision,
    registry: Registry,
    location: str,
    promote: bool,
    emit: Callable[[str], None],
    **note: Any,
) -> str:
    """Publish a copy of the package whose metadata.gate holds `decision` (and `note`): a published
    version is immutable, so its gate record must go in with it."""
    from mlserving_training.pipeline import publish

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "package"
        shutil.copytree(package_dir, staged)
        metadata = read_metadata(staged)
        (staged / METADATA_FILE).write_text(replace(metadata, gate={**decision.to_dict(), **note}).to_json())
        return publish(staged, location, promote, emit, registry=registry)
