"""The gate's baseline rule: beat every baseline by the margin, and say which one to serve if not."""

from __future__ import annotations

from mlserving_training.baselines import rivals, verdict
from mlserving_training.gate import decide


def test_a_candidate_that_beats_naive_but_not_the_linear_ar_is_refused_naming_it() -> None:
    d = decide(0.8, 1.3, None, 0.0, baselines={"seasonal_day": 1.8, "linear_ar": 0.76, "linear_ar_week": 0.75})
    assert not d.passed
    assert d.reason.startswith("does not beat linear_ar, linear_ar_week")
    assert "serve the linear_ar_week baseline instead" in d.reason
    assert d.baselines == {"naive": 1.3, "seasonal_day": 1.8, "linear_ar": 0.76, "linear_ar_week": 0.75}


def test_every_baseline_must_be_beaten_by_the_margin_before_the_serving_version_counts() -> None:
    others = {"seasonal_week": 1.0, "linear_ar": 0.9}
    assert decide(0.80, 1.3, None, 0.1, baselines=others).passed  # 0.80 < 0.9 x 0.9 = 0.81
    assert not decide(0.82, 1.3, None, 0.1, baselines=others).passed
    worse_than_serving = decide(0.5, 1.3, 0.4, 0.0, "v3", baselines=others)
    assert not worse_than_serving.passed and "not better than serving v3" in worse_than_serving.reason
    assert decide(0.5, 1.3, 0.6, 0.0, "v3", baselines=others).passed
    assert "FORCED" not in decide(0.5, 1.3, None, 0.0).line()


def _table(**backtest: float) -> dict:
    best = min((n for n in backtest if n != "model"), key=backtest.get)
    return {"candidates": {n: {"backtest_mae_mean": v} for n, v in backtest.items()}, "best_baseline": best}


def test_verdict_names_the_baseline_to_serve_and_a_linear_package_is_not_asked_to_beat_itself() -> None:
    table = _table(model=1.0, naive=1.5, seasonal_day=2.0, linear_ar=0.9)
    passed, reason = verdict(table)
    assert not passed and "loses to linear_ar" in reason and "serve the linear_ar baseline instead" in reason
    assert rivals(table, "linear") == ["naive", "seasonal_day"]
    assert verdict(table, 0.0, "linear")[0] is True
    assert verdict(_table(model=1.0, naive=1.5, linear_ar=1.2), 0.2)[0] is False  # 1.0 >= 1.2 x 0.8


def test_one_mase_scale_falls_back_from_a_week_to_a_day_to_one_reading() -> None:
    import numpy as np

    from mlserving_training.baselines import mase_scale

    hourly = 3600.0
    rng = np.random.default_rng(0)
    values = rng.normal(size=3 * 168)
    scale, period = mase_scale(values, hourly)
    assert period == 168 and scale == np.mean(np.abs(values[168:] - values[:-168]))
    assert mase_scale(values[: 2 * 168], hourly)[1] == 24  # two weeks exactly: not more than two
    assert mase_scale(values[:48], hourly)[1] == 1
    assert mase_scale(values, 7 * 3600.0)[1] == 1  # 7 h does not divide a day: no season
