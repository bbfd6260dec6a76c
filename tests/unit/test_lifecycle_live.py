"""Live accuracy in the server: alignment of forecasts with later readings, sliding MAE, bounded memory,
input drift binning, and the auto-rollback guard's decision rule."""

from __future__ import annotations

import numpy as np
import pytest

from mlserving_common.package import histogram_fractions, population_stability_index
from mlserving_common.series import actual_for, overlap_shift
from mlserving_server.config import AutoRollbackConfig, ConfigError, parse_config
from mlserving_server.drift import InputWindow, bin_indices
from mlserving_server.guard import RollbackGuard
from mlserving_server.live import SERVING, SHADOW, LiveScores, MaeWindow, SeriesTracker

SERIES = [float(x) for x in range(100, 160)]  # reading i is 100 + i


def window(start: int, w: int = 6) -> tuple[float, ...]:
    return tuple(SERIES[start : start + w])


def test_actual_is_the_reading_after_the_previous_window():
    assert actual_for(window(0), window(1)) == SERIES[6]
    assert actual_for(window(0), window(3)) == SERIES[6]  # two windows served by other replicas
    assert actual_for(window(0), window(5)) == SERIES[6]  # shift 5 of 6: the last shared reading
    assert actual_for(window(0), window(0)) is None  # a retry reveals nothing
    assert actual_for(window(0), window(6)) is None  # no overlap: cannot be aligned
    assert actual_for(window(3), window(1)) is None  # older window arriving late
    assert overlap_shift((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == 0


def test_tracker_scores_each_forecast_once_against_its_actual():
    scores = LiveScores(size=500)
    seen = []
    tracker = SeriesTracker(scores, max_series=10, on_score=lambda key, error, mae: seen.append((key, error)))
    # Forecast = last value + 0.5: the actual is last + 1, so every error is 0.5.
    for start in range(10):
        w = window(start)
        tracker.observe("t", "s1", "lstm", w, [(SERVING, "v1", w[-1] + 0.5)])
    assert len(seen) == 9 and all(e == pytest.approx(0.5) for _, e in seen)
    assert seen[0][0] == ("t", "lstm", "v1", SERVING)
    assert scores.get("t", "lstm", "v1").mae == pytest.approx(0.5)
    assert scores.get("t", "lstm", "v1").total == 9


def test_retries_and_gaps_are_not_scored_and_shadow_is_scored_separately():
    scores = LiveScores(size=500)
    tracker = SeriesTracker(scores, max_series=10)
    w0, w1 = window(0), window(1)
    tracker.observe("t", "s", "m", w0, [(SERVING, "v1", SERIES[6] + 1.0), (SHADOW, "v2", SERIES[6] - 3.0)])
    assert tracker.observe("t", "s", "m", w0, [(SERVING, "v1", SERIES[6] + 1.0)]) == 0  # retry: wait on
    assert tracker.observe("t", "s", "m", w1, [(SERVING, "v1", 0.0)]) == 2
    assert scores.get("t", "m", "v1", SERVING).mae == pytest.approx(1.0)
    assert scores.get("t", "m", "v2", SHADOW).mae == pytest.approx(3.0)
    assert tracker.observe("t", "s", "m", window(30), [(SERVING, "v1", 0.0)]) == 0  # a gap: restart
    assert tracker.observe("t", "other", "m", window(31), [(SERVING, "v1", 0.0)]) == 0  # series are separate
    assert scores.get("t", "m", "v1").total == 1


def test_mae_window_slides_and_counts_everything():
    mae = MaeWindow(size=3)
    for error in (10.0, 1.0, 2.0, 3.0):
        mae.add(error)
    assert mae.mae == pytest.approx(2.0) and mae.count == 3 and mae.total == 4
    for _ in range(5000):  # the running sum is re-summed now and then; stays exact enough
        mae.add(0.1)
    assert mae.mae == pytest.approx(0.1)


def test_memory_is_bounded_by_least_recently_used_series():
    tracker = SeriesTracker(LiveScores(10), max_series=3)
    for s in ("a", "b", "c"):
        tracker.observe("t", s, "m", window(0), [(SERVING, "v1", 0.0)])
    tracker.observe("t", "a", "m", window(1), [(SERVING, "v1", 0.0)])  # touch a
    tracker.observe("t", "d", "m", window(0), [(SERVING, "v1", 0.0)])  # evicts b
    assert len(tracker) == 3 and tracker.evicted == 1
    assert tracker.observe("t", "b", "m", window(1), [(SERVING, "v1", 0.0)]) == 0  # b was forgotten
    assert tracker.observe("t", "a", "m", window(2), [(SERVING, "v1", 0.0)]) == 1


def test_live_mae_is_never_pooled_over_tenants():
    scores = LiveScores(10)
    scores.add(("a", "m", "v1", SERVING), 1.0)
    scores.add(("b", "m", "v1", SERVING), 3.0)
    assert scores.get("a", "m", "v1").mae == pytest.approx(1.0)
    assert scores.get("b", "m", "v1").mae == pytest.approx(3.0)
    assert scores.forget("a", "m", keep={"v2"}) == [("a", "m", "v1", SERVING)]


def test_input_binning_matches_the_package_histogram_and_psi_detects_a_shift():
    edges = np.linspace(-4, 4, 17)
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(0, 1.5, 5000), edges, [-1e9, 1e9]])
    counts = np.bincount(bin_indices(values, edges), minlength=16)
    assert (counts / counts.sum()).tolist() == pytest.approx(histogram_fractions(values.tolist(), edges.tolist()))
    reference = histogram_fractions(rng.normal(0, 1, 20000).tolist(), edges.tolist())
    inputs = InputWindow(edges, reference, size=600)
    history: list[float] = []
    for _ in range(40):
        batch = rng.normal(0, 1, rng.integers(1, 64))
        inputs.add(batch)
        history += batch.tolist()
        assert inputs.fractions() == pytest.approx(histogram_fractions(history[-600:], edges.tolist()))
    assert inputs.psi() < 0.1
    inputs.add(rng.normal(2.0, 1, 600))  # a level shift of two standard deviations
    assert inputs.psi() > 1.0
    assert inputs.psi() == pytest.approx(population_stability_index(reference, inputs.fractions()))


class _Runtime:
    def __init__(self, version: str) -> None:
        self.name, self.version = "m", version


def _guard(**settings):
    scores = LiveScores(500)
    rolled: list[tuple] = []
    notified: list[dict] = []
    config = AutoRollbackConfig(**{"margin": 0.2, "min_scored": 20, **settings})
    guard = RollbackGuard(
        config, scores, lambda *args: rolled.append(args) or True, lambda figures: notified.append(figures)
    )
    return guard, scores, rolled, notified


def test_guard_rolls_back_a_worse_new_version_and_keeps_a_good_one():
    guard, scores, rolled, notified = _guard()
    for _ in range(50):
        scores.add(("t", "m", "v1", SERVING), 1.0)
    old, new = _Runtime("v1"), _Runtime("v2")
    guard.on_swap("t", "m", "current", old, new)
    assert guard.watching() == {"t/m": "v2"}
    for _ in range(19):
        guard.on_score("t", "m", "v2", 1.3)
        guard.on_score("t", "m", "v1", 9.0)  # stragglers of the old version do not count
    assert rolled == []
    guard.on_score("t", "m", "v2", 1.3)  # 20th: 1.3 > 1.0 x 1.2
    assert rolled == [("t", "m", "current", old, "v2")]
    assert notified[0]["decision"] == "rolled back" and notified[0]["live_mae"] == pytest.approx(1.3)
    assert notified[0]["predecessor_live_mae"] == pytest.approx(1.0) and notified[0]["scored"] == 20
    assert notified[0]["tenant"] == "t"
    assert guard.watching() == {}

    guard.on_swap("t", "m", "current", old, _Runtime("v3"))
    for _ in range(20):
        guard.on_score("t", "m", "v3", 1.1)  # within the margin
    assert len(rolled) == 1 and guard.decisions[-1]["decision"] == "kept"


def test_guard_needs_a_baseline_and_can_be_disabled():
    guard, scores, _, _ = _guard()
    for _ in range(5):
        scores.add(("t", "m", "v1", SERVING), 1.0)
    guard.on_swap("t", "m", "current", _Runtime("v1"), _Runtime("v2"))  # 5 < min_scored: no baseline
    assert guard.watching() == {}
    guard, scores, _, _ = _guard(enabled=False)
    for _ in range(50):
        scores.add(("t", "m", "v1", SERVING), 1.0)
    guard.on_swap("t", "m", "current", _Runtime("v1"), _Runtime("v2"))
    assert guard.watching() == {}


def test_guard_judges_each_tenant_on_its_own_scores():
    """Another tenant's scores neither make a baseline nor count towards a decision."""
    guard, scores, rolled, _ = _guard()
    for _ in range(50):
        scores.add(("a", "m", "v1", SERVING), 100.0)  # a's crafted windows: a huge baseline
        scores.add(("b", "m", "v1", SERVING), 1.0)
    old = _Runtime("v1")
    guard.on_swap("a", "m", "current", old, _Runtime("v2"))
    guard.on_swap("b", "m", "current", old, _Runtime("v2"))
    guard.on_swap("c", "m", "current", old, _Runtime("v2"))  # c has no baseline of its own
    assert guard.watching() == {"a/m": "v2", "b/m": "v2"}
    for _ in range(20):
        guard.on_score("a", "m", "v2", 50.0)  # a's errors: far worse than b's, below a's baseline
    assert rolled == [] and guard.decisions[-1]["decision"] == "kept" and guard.decisions[-1]["tenant"] == "a"
    for _ in range(20):
        guard.on_score("b", "m", "v2", 3.0)  # b's own: 3.0 > 1.0 x 1.2
    assert rolled == [("b", "m", "current", old, "v2")]


BASE = {"tenants": {"a": {"models": {"lstm": "current", "ann": "v1"}, "default_model": "lstm"}}}


def test_lifecycle_settings_shadow_and_record_are_validated_by_name():
    config = parse_config(
        {
            **BASE,
            "lifecycle": {"drift": {"error_factor": 2.0}, "auto_rollback": {"margin": 0.1}},
            "tenants": {"a": {**BASE["tenants"]["a"], "shadow": {"lstm": "v3"}, "record": True}},
        }
    )
    assert config.lifecycle.drift.error_factor == 2.0 and config.lifecycle.auto_rollback.margin == 0.1
    assert config.lifecycle.live_accuracy.window == 500
    assert config.tenants["a"].shadow == {"lstm": "v3"} and config.tenants["a"].record is True
    assert config.shadow_versions() == {("lstm", "v3")}
    bad = [
        ({"lifecycle": {"drift": {"error_factor": 1.0}}}, "lifecycle.drift.error_factor"),
        ({"lifecycle": {"drift": {"bogus": 1}}}, "lifecycle.drift.bogus: unknown field"),
        ({"lifecycle": {"live_accuracy": {"window": 5}}}, "lifecycle.live_accuracy.window"),
        ({"lifecycle": {"auto_rollback": {"min_scored": 1000}}}, "lifecycle.auto_rollback.min_scored"),
        ({"lifecycle": {"auto_rollback": {"margin": -1}}}, "lifecycle.auto_rollback.margin"),
        ({"lifecycle": {"drift": {"psi_threshold": "high"}}}, "lifecycle.drift.psi_threshold"),
        ({"lifecycle": {"live_accuracy": {"enabled": False}}}, "lifecycle.auto_rollback.enabled"),
    ]
    for extra, message in bad:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            parse_config({**BASE, **extra})
    tenant_bad = [
        ({"shadow": {"gru": "v2"}}, "tenants.a.shadow.gru: not one of the tenant's models"),
        ({"shadow": {"lstm": "latest"}}, "tenants.a.shadow.lstm: version 'latest'"),
        ({"shadow": {"ann": "v1"}}, "tenants.a.shadow.ann: 'v1' is the version the tenant already serves"),
        ({"shadow": ["lstm"]}, "tenants.a.shadow: must be a mapping"),
        ({"record": "yes"}, "tenants.a.record"),
    ]
    for extra, message in tenant_bad:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            parse_config({"tenants": {"a": {**BASE["tenants"]["a"], **extra}}})
