"""The quality gate: a retrained model is published only if it is measurably better.

Candidate, serving version and naive forecast are scored on the SAME holdout: the newest
readings of the series the candidate was trained on (its test split), each model with LiteRT
(what serves) and its own normalisation and window. The candidate passes when

    candidate MAE <= serving MAE x (1 - margin)   (skipped when nothing serves yet)
    candidate MAE <  naive MAE   x (1 - margin)

A refusal is a normal outcome, not an error: the caller publishes nothing and exits 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlserving_common.package import MODEL_FILE, verify_package
from mlserving_training.cleaning import CleanSeries
from mlserving_training.features import denormalize, normalize, split_bounds
from mlserving_training.runtime import predict_tflite


class GateError(ValueError):
    """The gate cannot compare (e.g. no holdout windows); the run fails rather than guessing."""


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
    ok = (series.segment[targets] == series.segment[targets - window]) & ~series.filled[targets]
    targets = targets[ok]
    if targets.size == 0:
        raise GateError(f"no holdout windows of {window} readings in the newest {n - start} readings")
    return Holdout(np.asarray(series.values, dtype=np.float64), targets)


def package_mae(package_dir: Path, holdout: Holdout) -> float:
    """MAE in raw units of a package's .tflite on the holdout, run with LiteRT."""
    metadata = verify_package(package_dir)
    x = normalize(holdout.windows(metadata.window), metadata.normalization).astype(np.float32)
    predicted = denormalize(predict_tflite(Path(package_dir) / MODEL_FILE, x), metadata.normalization)
    return float(np.mean(np.abs(predicted - holdout.actual)))


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        serving = (
            f"serving {self.serving_version} MAE {self.serving_mae:.4f}" if self.serving_mae is not None
            else "nothing serving yet"
        )
        verdict = "PASS" if self.passed else "REFUSED"
        return (
            f"gate {verdict}: candidate MAE {self.candidate_mae:.4f} | {serving} | naive MAE {self.naive_mae:.4f}"
            f" | margin {self.margin:g} | {self.windows} holdout windows | {self.reason}"
        )


def decide(
    candidate: float,
    naive: float,
    serving: float | None,
    margin: float,
    serving_version: str | None = None,
    windows: int = 0,
) -> GateDecision:
    """Apply the two rules; the reason names the rule that failed, or both that passed."""
    factor = 1.0 - margin
    naive_limit = naive * factor
    if not candidate < naive_limit:
        reason = f"does not beat naive: {candidate:.4f} >= {naive:.4f} x {factor:g} = {naive_limit:.4f}"
        return GateDecision(False, reason, candidate, naive, serving, serving_version, margin, windows)
    if serving is None:
        reason = f"beats naive ({candidate:.4f} < {naive_limit:.4f}); no version serving yet"
        return GateDecision(True, reason, candidate, naive, serving, serving_version, margin, windows)
    serving_limit = serving * factor
    if not candidate <= serving_limit:
        reason = (
            f"not better than serving {serving_version}: {candidate:.4f} > {serving:.4f} x {factor:g}"
            f" = {serving_limit:.4f}"
        )
        return GateDecision(False, reason, candidate, naive, serving, serving_version, margin, windows)
    reason = (
        f"beats serving {serving_version} ({candidate:.4f} <= {serving_limit:.4f}) and naive"
        f" ({candidate:.4f} < {naive_limit:.4f})"
    )
    return GateDecision(True, reason, candidate, naive, serving, serving_version, margin, windows)
