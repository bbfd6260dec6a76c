"""Real training end to end: generated CSV -> train (both models) -> publish -> LiteRT predicts.

Few epochs on a small series keep this around a minute on 2 cores; it still proves the path:
per-epoch progress, the cleaning report, builtin-ops TFLite with a resizable batch, parity with
Keras, metadata that passes the schema, registry versions and current, and determinism.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlserving_common.package import verify_package
from mlserving_common.registry import FilesystemRegistry
from mlserving_training.cli import main

pytestmark = pytest.mark.slow

EPOCHS = 3


@pytest.fixture(scope="module")
def bts_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "bts.csv"
    assert main(["generate", "--stations", "2", "--days", "45", "--seed", "11", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry")


def predict_with_litert(package: Path, windows: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(package / "model.tflite"))
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(windows.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], windows.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("kind", ["lstm", "ann"])
def test_train_publish_and_serve_with_litert(
    kind: str, bts_csv: Path, registry_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / kind
    argv = [
        "train",
        "--data",
        str(bts_csv),
        "--series",
        "BTS002/1",
        "--model",
        kind,
        "--epochs",
        str(EPOCHS),
        "--patience",
        "0",
        "--out",
        str(package),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == [
        f"{i}/{EPOCHS}" for i in range(1, EPOCHS + 1)
    ]
    assert "dropped  sentinel" in out and "repaired gap_filled" in out
    assert (tmp_path / f"{kind}-forecast.png").stat().st_size > 10_000

    metadata = verify_package(package)
    assert metadata.version == "v0" and metadata.name == kind and metadata.series_id == "BTS002/1"
    assert metadata.input.shape == [-1, 6] and metadata.output.shape == [-1, 1]
    assert metadata.parity["passed"] and metadata.parity["max_abs_diff"] <= 1e-4
    test = metadata.metrics["test"]
    assert test["mae"] > 0 and test["naive_mae"] > 0 and isinstance(metadata.metrics["beats_naive"], bool)
    assert metadata.data["rows_series"] < metadata.data["rows_total"]
    assert metadata.data["cleaning"]["dropped"]["sentinel"] > 0
    assert len(metadata.input_stats["fractions"]) == len(metadata.input_stats["edges"]) - 1
    assert sum(metadata.input_stats["fractions"]) == pytest.approx(1.0)
    assert metadata.training["epochs_run"] == EPOCHS and "tensorflow" in metadata.framework

    # A few epochs rarely beat every baseline: --force promotes it anyway, on record (the gate's
    # verdicts themselves are tested on the Taylor series in test_training_gate_doors.py).
    assert main(["publish", str(package), "--registry", str(registry_root), "--promote", "--force"]) == 0
    out = capsys.readouterr().out
    assert f"published {kind} v1" in out and ("gate PASS" in out or "gate FORCED" in out)
    registry = FilesystemRegistry(registry_root)
    assert registry.current(kind) == "v1"
    served = registry.fetch(kind, registry.current(kind))
    assert verify_package(served).version == "v1"
    gate = verify_package(served).gate
    assert gate["forced"] is (not gate["passed"]) and "naive" in gate["baselines"]

    # Batch of 1 and batch of 33 through the same resizable input; raw values in, raw values out.
    norm = metadata.normalization
    raw = np.linspace(15.0, 30.0, 6 * 33).reshape(33, 6)
    batch = predict_with_litert(served, (raw - norm.mean) / norm.std)
    single = predict_with_litert(served, (raw[:1] - norm.mean) / norm.std)
    assert batch.shape == (33, 1) and single.shape == (1, 1)
    assert np.allclose(single[0], batch[0], atol=1e-5)
    forecast = batch[:, 0] * norm.std + norm.mean
    assert np.all(np.isfinite(forecast)) and np.all((forecast > 0) & (forecast < 100))

    assert main(["evaluate", str(served), "--data", str(bts_csv), "--split", "test", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["mae"] == pytest.approx(test["mae"], rel=1e-4)
    assert evaluated["naive_mae"] == pytest.approx(test["naive_mae"], rel=1e-9)


def test_pipeline_from_yaml_and_environment_publishes_and_promotes(
    bts_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(f"model: ann\nname: grid-ann\nepochs: 2\ndata: {bts_csv}\nplot: none\n")
    registry_root = tmp_path / "registry"
    monkeypatch.setenv("MLSERVING_TRAIN_CONFIG", str(config))
    monkeypatch.setenv("MLSERVING_TRAIN_REGISTRY", str(registry_root))
    monkeypatch.setenv("MLSERVING_TRAIN_PROMOTE", "true")
    monkeypatch.setenv("MLSERVING_TRAIN_OUT", str(tmp_path / "pkg"))
    # Two epochs do not beat the naive forecast, so the quality gate (docs/lifecycle.md) would
    # refuse the package; the gate itself is tested in tests/*/test_lifecycle_gate*.py.
    monkeypatch.setenv("MLSERVING_TRAIN_GATE", "false")
    assert main(["pipeline"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "published grid-ann v1" in out and "(test): MAE" in out
    assert "gate disabled" in out
    registry = FilesystemRegistry(registry_root)
    assert registry.current("grid-ann") == "v1"
    assert verify_package(registry.fetch("grid-ann")).training["config"]["epochs"] == 2


def test_a_package_failing_parity_is_not_written(
    bts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "pkg"
    argv = [
        "train",
        "--data",
        str(bts_csv),
        "--model",
        "ann",
        "--epochs",
        "1",
        "--tolerance",
        "1e-15",
        "--out",
        str(package),
        "--plot",
        "none",
    ]
    assert main(argv) == 1
    assert "not publishing" in capsys.readouterr().err
    assert not package.exists()


def test_demo_packages_are_deterministic(tmp_path: Path) -> None:
    from mlserving_training.quick import build_demo_packages

    first = build_demo_packages(tmp_path / "a", models=("ann",), epochs=2)
    second = build_demo_packages(tmp_path / "b", models=("ann",), epochs=2)
    assert first["ann"] == tmp_path / "a" / "ann" / "v1"
    assert FilesystemRegistry(tmp_path / "a").current("ann") == "v1"
    assert verify_package(first["ann"]).model_sha256 == verify_package(second["ann"]).model_sha256
    # A cached registry is left alone.
    assert build_demo_packages(tmp_path / "a", models=("ann",), epochs=2) == first
    assert FilesystemRegistry(tmp_path / "a").versions("ann") == ["v1"]
