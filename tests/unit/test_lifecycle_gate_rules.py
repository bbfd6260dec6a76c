"""The quality gate's rules and its holdout: same targets for every model, newest readings only."""

from __future__ import annotations

import numpy as np
import pytest

from mlserving_training.cleaning import CleanSeries
from mlserving_training.config import ConfigError, TrainConfig
from mlserving_training.features import build_dataset, denormalize
from mlserving_training.gate import GateError, build_holdout, decide


def series(values, segment=None, filled=None) -> CleanSeries:
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    return CleanSeries(
        times=np.arange(n, dtype=np.int64) * 3600,
        values=values,
        segment=np.zeros(n, np.int32) if segment is None else np.asarray(segment, np.int32),
        filled=np.zeros(n, bool) if filled is None else np.asarray(filled, bool),
        interval_s=3600.0,
    )


def test_refuses_a_candidate_worse_than_serving_and_accepts_a_better_one():
    worse = decide(candidate=1.10, naive=1.50, serving=1.00, margin=0.0, serving_version="v3", windows=100)
    assert not worse.passed and "not better than serving v3" in worse.reason
    better = decide(candidate=0.90, naive=1.50, serving=1.00, margin=0.0, serving_version="v3", windows=100)
    assert better.passed and "beats serving v3" in better.reason
    assert better.to_dict() == {
        "passed": True,
        "reason": better.reason,
        "candidate_mae": 0.9,
        "naive_mae": 1.5,
        "serving_mae": 1.0,
        "serving_version": "v3",
        "margin": 0.0,
        "windows": 100,
        "baselines": {"naive": 1.5},
        "forced": False,
    }
    assert "PASS" in better.line() and "REFUSED" in worse.line()


def test_margin_applies_to_serving_and_naive():
    assert decide(0.96, 1.5, 1.0, margin=0.05).passed is False  # 0.96 > 0.95
    assert decide(0.95, 1.5, 1.0, margin=0.05).passed is True  # equal to the limit passes (<=)
    not_naive = decide(0.96, 1.0, None, margin=0.05)
    assert not not_naive.passed and "does not beat naive" in not_naive.reason


def test_beating_naive_is_required_even_when_nothing_serves():
    assert decide(0.5, 1.0, None, 0.0).passed
    assert "no version serving yet" in decide(0.5, 1.0, None, 0.0).reason
    assert not decide(1.0, 1.0, None, 0.0).passed  # equal to naive does not beat it
    assert not decide(0.5, 0.4, 0.6, 0.0).passed  # better than serving, worse than naive


def test_holdout_targets_are_the_candidates_test_targets():
    rng = np.random.default_rng(0)
    s = series(np.cumsum(rng.normal(size=400)) + 50)
    dataset = build_dataset(s, 6, 0.7, 0.15)
    holdout = build_holdout(s, 0.7, 0.15, 6)
    np.testing.assert_allclose(holdout.actual, denormalize(dataset.test.y, dataset.normalization), rtol=1e-5)
    np.testing.assert_allclose(holdout.windows(6), denormalize(dataset.test.x, dataset.normalization), rtol=1e-5)
    np.testing.assert_array_equal(holdout.naive, holdout.windows(6)[:, -1])
    # A model with a larger window sees the same newest targets minus the first few.
    wide = build_holdout(s, 0.7, 0.15, 8)
    assert len(wide) == len(holdout) - 2
    np.testing.assert_array_equal(wide.targets, holdout.targets[2:])
    np.testing.assert_array_equal(wide.windows(6), holdout.windows(6)[2:])


def test_holdout_skips_windows_across_gaps_and_interpolated_targets():
    n = 100
    segment = np.where(np.arange(n) < 90, 0, 1)
    filled = np.zeros(n, bool)
    filled[95] = True
    holdout = build_holdout(series(np.arange(n, dtype=float), segment, filled), 0.7, 0.15, 6)
    # test split starts at 85: targets 91..99, minus those whose window crosses 89|90, are filled,
    # or follow a filled reading (95 was interpolated toward 96: 96 would see itself; issue #16)
    assert list(holdout.targets) == [97, 98, 99]
    with pytest.raises(GateError, match="no holdout windows"):
        build_holdout(series(np.arange(20, dtype=float)), 0.7, 0.15, 6)


def test_gate_and_records_settings_are_validated_by_name():
    TrainConfig(gate_margin=0.1, trigger="drift", broker_host="mqtt", tenants=["tenant-b"]).validate()
    for kwargs, field in [
        ({"gate_margin": 1.0}, "gate_margin"),
        ({"gate_margin": -0.1}, "gate_margin"),
        ({"trigger": "hourly"}, "trigger"),
        ({"records": True}, "broker_host"),
        ({"trigger": "drift"}, "broker_host"),
        ({"records_max": 10}, "records_max"),
        ({"tenants": ["a/b"]}, "tenants"),
        ({"tenants": ["ok", "+"]}, "tenants"),
        # No tenant named: no tenant's traffic is used (never "every tenant").
        ({"records": True, "broker_host": "mqtt"}, "tenants"),
        ({"trigger": "drift", "broker_host": "mqtt"}, "tenants"),
        ({"broker_port": 0}, "broker_port"),
        ({"topic_prefix": "ml/#"}, "topic_prefix"),
        ({"client_id": "x" * 65}, "client_id"),
        ({"synthetic_shift": 0.5, "synthetic_shift_days": 200}, "synthetic_shift_days"),
    ]:
        with pytest.raises(ConfigError, match=f"^{field}:"):
            TrainConfig(**kwargs).validate()


def test_chart_quality_gate_margin_is_a_trainer_setting():
    config = TrainConfig().merged(
        {"gate_margin": "0.05", "gate": "false", "records": "yes", "tenants": "tenant-a, tenant-b"}, source="test"
    )
    assert (config.gate_margin, config.gate, config.records) == (0.05, False, True)
    assert config.tenants == ["tenant-a", "tenant-b"]
    assert config.session_client_id == "ml-trainer:trainer-lstm"
