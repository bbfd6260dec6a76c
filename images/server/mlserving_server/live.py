"""Live accuracy: score past forecasts against the actual readings that later requests reveal.

A forecast made from window W of series S is scored when a later request of S carries a window
that overlaps W shifted by k (1 <= k < window): its reading at position window - k is the actual
(`mlserving_common.series.actual_for`). With N replicas sharing a tenant each one sees roughly
every N-th window, so scoring works up to window - 1 replicas. Requests without `series_id`, or
with the legacy normalised payload, are not scored.

Memory is bounded: one pending entry per (tenant, series, model), least recently used evicted
beyond `max_series`; one deque of `window` errors per (tenant, model, version, role).
Only the batching worker calls `observe`; readers (metrics, guard) take no lock on the hot path.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mlserving_common.series import overlap_shift

SERVING, SHADOW = "serving", "shadow"
#: (role, version, forecast) of one window
Forecast = tuple[str, str, float]
#: (tenant, model, version, role)
ScoreKey = tuple[str, str, str, str]


class MaeWindow:
    """MAE of the last `size` absolute errors, plus how many were ever scored."""

    __slots__ = ("_errors", "_since_resum", "_sum", "total")

    def __init__(self, size: int) -> None:
        self._errors: deque[float] = deque(maxlen=size)
        self._sum = 0.0
        self.total = 0
        self._since_resum = 0

    def add(self, error: float) -> None:
        errors = self._errors
        if len(errors) == errors.maxlen:
            self._sum -= errors[0]
        errors.append(error)
        self._sum += error
        self.total += 1
        self._since_resum += 1
        if self._since_resum >= 4096:  # keep the running sum from drifting
            self._sum = float(sum(errors))
            self._since_resum = 0

    @property
    def count(self) -> int:
        """Errors in the window (<= size)."""
        return len(self._errors)

    @property
    def mae(self) -> float | None:
        return self._sum / len(self._errors) if self._errors else None


@dataclass
class _Pending:
    window: tuple[float, ...]
    forecasts: list[Forecast] = field(default_factory=list)


class LiveScores:
    """Sliding-window MAE per (tenant, model, version, role).

    Never pooled over tenants: every decision taken on these figures (auto-rollback, drift) is
    one tenant's, so another tenant's traffic cannot move it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.by_key: dict[ScoreKey, MaeWindow] = {}

    def add(self, key: ScoreKey, error: float) -> MaeWindow:
        window = self.by_key.get(key)
        if window is None:
            window = self.by_key[key] = MaeWindow(self.size)
        window.add(error)
        return window

    def get(self, tenant: str, model: str, version: str, role: str = SERVING) -> MaeWindow | None:
        return self.by_key.get((tenant, model, version, role))

    def forget(self, tenant: str, model: str, keep: set[str]) -> list[ScoreKey]:
        """Drop per-tenant windows of versions not in `keep`; returns the dropped keys."""
        dropped = [k for k in self.by_key if k[0] == tenant and k[1] == model and k[2] not in keep]
        for key in dropped:
            del self.by_key[key]
        return dropped


ScoreListener = Callable[[ScoreKey, float, MaeWindow], None]


class SeriesTracker:
    """The last window of each live series and the forecasts made from it, waiting for their actual."""

    def __init__(self, scores: LiveScores, max_series: int, on_score: ScoreListener | None = None) -> None:
        self.scores = scores
        self.max_series = max_series
        self.on_score = on_score
        self._series: OrderedDict[tuple[str, str, str], _Pending] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._series)

    def observe(
        self, tenant: str, series_id: str, model: str, window: Sequence[float], forecasts: list[Forecast]
    ) -> int:
        """Record forecasts made from `window`; score the previous window's forecasts if `window`
        reveals their actual. Returns how many forecasts were scored."""
        key = (tenant, series_id, model)
        window = tuple(window)
        pending = self._series.get(key)
        scored = 0
        if pending is not None:
            self._series.move_to_end(key)
            k = overlap_shift(pending.window, window)
            if k == 0:  # the same window again (a retry): keep waiting, refresh the forecasts
                pending.forecasts = _merge(pending.forecasts, forecasts)
                return 0
            if k is not None:
                actual = window[len(window) - k]
                for role, version, forecast in pending.forecasts:
                    error = abs(forecast - actual)
                    score_key = (tenant, model, version, role)
                    mae = self.scores.add(score_key, error)
                    scored += 1
                    if self.on_score is not None:
                        self.on_score(score_key, error, mae)
            pending.window = window
            pending.forecasts = list(forecasts)
            return scored
        self._series[key] = _Pending(window, list(forecasts))
        if len(self._series) > self.max_series:
            self._series.popitem(last=False)
            self.evicted += 1
        return 0


def _merge(old: list[Forecast], new: list[Forecast]) -> list[Forecast]:
    roles = {role for role, _, _ in new}
    return [f for f in old if f[0] not in roles] + list(new)
