"""Drift signals: live error against the package's test error, live inputs against its training inputs.

- error: the serving version's live MAE (last `live_accuracy.window` scored forecasts, at least
  `drift.min_scored`) above `drift.error_factor` x metadata.metrics.test.mae (val if no test).
- input: population stability index between metadata.input_stats (histogram of the normalised
  training inputs) and the last `drift.input_window` normalised input values the tenant sent,
  above `drift.psi_threshold`. Values are binned exactly like
  `mlserving_common.package.histogram_fractions` (tested), but vectorised per batch.

Each signal is a 0/1 gauge; a change is logged once and, when turning on, published (not
retained) on `<prefix>/_events/drift` for trainers that retrain on drift (docs/lifecycle.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlserving_common.package import Metadata, population_stability_index


def reference_mae(metadata: Metadata) -> float | None:
    """Test MAE (raw units) recorded by the trainer, else validation MAE, else None."""
    for split in ("test", "val"):
        value = metadata.metrics.get(split, {}).get("mae") if isinstance(metadata.metrics.get(split), dict) else None
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def bin_indices(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value as package.histogram_fractions counts it: [e_i, e_i+1), outliers in the end bins."""
    index = np.searchsorted(edges, values, side="right") - 1
    return np.clip(index, 0, len(edges) - 2)


class InputWindow:
    """The last `size` normalised input values as bin counts (a ring of bin indices)."""

    def __init__(self, edges: Sequence[float], expected: Sequence[float], size: int) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        self.expected = list(expected)
        self.size = size
        self._ring = np.zeros(size, dtype=np.int32)
        self._counts = np.zeros(len(edges) - 1, dtype=np.int64)
        self._filled = 0
        self._position = 0
        self.since_check = 0

    @classmethod
    def for_metadata(cls, metadata: Metadata, size: int) -> InputWindow | None:
        stats = metadata.input_stats or {}
        edges, fractions = stats.get("edges"), stats.get("fractions")
        if stats.get("space", "normalized") != "normalized" or not edges or not fractions:
            return None
        if len(fractions) != len(edges) - 1:
            return None
        return cls(edges, fractions, size)

    @property
    def full(self) -> bool:
        return self._filled >= self.size

    def add(self, normalized: np.ndarray) -> None:
        bins = bin_indices(np.asarray(normalized, dtype=np.float64).reshape(-1), self.edges)
        if bins.size > self.size:
            bins = bins[-self.size :]
        n = bins.size
        if n == 0:
            return
        slots = (self._position + np.arange(n)) % self.size
        # Until the ring is full, writing never wrapped: slots past `_filled` hold no value yet.
        unwritten = self.size - self._filled
        if n > unwritten:
            self._counts -= np.bincount(self._ring[slots[unwritten:]], minlength=len(self._counts))
        self._ring[slots] = bins
        self._counts += np.bincount(bins, minlength=len(self._counts))
        self._position = (self._position + n) % self.size
        self._filled = min(self.size, self._filled + n)
        self.since_check += n

    def fractions(self) -> list[float]:
        total = int(self._counts.sum())
        return (self._counts / total).tolist() if total else [0.0] * len(self._counts)

    def psi(self) -> float:
        self.since_check = 0
        return population_stability_index(self.expected, self.fractions())


def signal_payload(**fields: Any) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in fields.items()}
