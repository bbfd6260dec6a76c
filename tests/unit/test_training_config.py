"""TrainConfig: defaults < YAML < environment < command line, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlserving_training.config import ConfigError, TrainConfig, load_config


def test_defaults_are_valid_and_match_the_tutorial_window() -> None:
    config = load_config(environ={})
    assert config == TrainConfig()
    assert (config.model, config.window, config.model_name) == ("lstm", 6, "lstm")
    assert config.test_fraction == pytest.approx(0.15)
    assert config.out_dir == Path("packages/lstm")
    assert config.plot_path == Path("packages/lstm-forecast.png")


def test_yaml_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(
        "model: ann\nepochs: 7\nbatch_size: 16\nlearning_rate: 0.01\nsentinels: [9999, -1]\n"
        "columns: {reading_time: ts}\npromote: true\n"
    )
    environ = {"MLSERVING_TRAIN_CONFIG": str(path), "MLSERVING_TRAIN_EPOCHS": "9", "MLSERVING_TRAIN_NAME": "grid-ann"}
    config = load_config(overrides={"batch_size": 8, "seed": None}, environ=environ)
    assert config.model == "ann" and config.name == "grid-ann" and config.model_name == "grid-ann"
    assert config.epochs == 9  # environment beats YAML
    assert config.batch_size == 8  # command line beats both
    assert config.seed == 42  # None means "not given"
    assert config.learning_rate == 0.01 and config.sentinels == [9999.0, -1.0]
    assert config.columns == {"reading_time": "ts"} and config.promote is True


def test_environment_values_are_coerced() -> None:
    environ = {
        "MLSERVING_TRAIN_PROMOTE": "yes",
        "MLSERVING_TRAIN_SENTINELS": "999999,-1",
        "MLSERVING_TRAIN_COLUMNS": "value=v, station_id=site",
        "MLSERVING_TRAIN_TOLERANCE": "1e-5",
    }
    config = load_config(environ=environ)
    assert config.promote is True and config.sentinels == [999999.0, -1.0]
    assert config.columns == {"value": "v", "station_id": "site"} and config.tolerance == 1e-5


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": "gru"}, "model"),
        ({"name": "Bad Name"}, "name"),
        ({"window": 1}, "window"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"train_fraction": 0.9, "val_fraction": 0.1}, "val_fraction"),
        ({"train_fraction": 1.5}, "train_fraction"),
        ({"series": "no-slash"}, "series"),
        ({"columns": {"time": "ts"}}, "columns"),
        ({"tolerance": 0}, "tolerance"),
        ({"epochs": "many"}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"promote": "maybe"}, "promote"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_values_name_their_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        load_config(overrides=overrides, environ={})


def test_unknown_environment_setting_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^epoch: unknown setting"):
        load_config(environ={"MLSERVING_TRAIN_EPOCH": "3"})


def test_bad_yaml_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", environ={})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml", environ={})


def test_camel_case_settings_as_the_chart_renders_them(tmp_path: Path) -> None:
    path = tmp_path / "trainer.yaml"
    path.write_text("model: ann\nbatchSize: 16\nlearningRate: 1e-05\ngateBaselines: naive\ntrain_fraction: 0.6\n")
    config = load_config(path, environ={})
    assert (config.batch_size, config.learning_rate, config.gate_baselines, config.train_fraction) == (
        16,
        1e-05,
        "naive",
        0.6,
    )
    with pytest.raises(ConfigError, match=r"^batchSizes: unknown setting"):
        load_config(overrides={"batchSizes": 2}, environ={})


def test_rules_across_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^val_fraction: train_fraction \+ val_fraction \(1.0\) must be < 1"):
        load_config(overrides={"train_fraction": 0.8, "val_fraction": 0.2}, environ={})
    with pytest.raises(ConfigError, match=r"^synthetic_shift_days: 120 must be < synthetic_days \(120\)"):
        load_config(overrides={"synthetic_shift_days": 120}, environ={})
