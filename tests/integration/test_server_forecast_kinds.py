"""Baselines as packages, long lookbacks, calendar inputs and day-ahead horizons, served for real.

Each package is trained by our own trainer on a small generated series (`linear` is fitted by
least squares in milliseconds; one small ANN trains for 2 epochs), published to a filesystem
registry and served by a real server process behind a real Mosquitto. The server's answers must
equal the trainer's offline forecast (the .tflite run by LiteRT on the trainer's own test inputs)
to 1e-5, which only holds if the server builds the same inputs: the same lookback, the same
calendar features from the request's `time`, the same horizon steps in the same order.
A hostile tenant's malformed or mismatched requests get `invalid_request` and the server keeps
answering.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from mlserving_common.package import read_metadata
from mlserving_common.registry import FilesystemRegistry
from mlserving_training import data as data_mod
from mlserving_training.config import TrainConfig
from mlserving_training.features import Dataset, denormalize
from mlserving_training.generate import generate_bts
from mlserving_training.pipeline import prepare, train
from mlserving_training.runtime import predict_tflite

from mqtt_support import client_cli

pytestmark = pytest.mark.slow

#: name -> (kind, window, horizon, calendar, epochs)
PACKAGES = {
    "lin48": ("linear", 48, 1, False, 1),
    "lincal": ("linear", 24, 1, True, 1),
    "linday": ("linear", 48, 12, True, 1),
    "anncal": ("ann", 24, 4, True, 2),
}
WINDOWS_PER_MODEL = 20


@dataclass(frozen=True)
class Trained:
    """What the trainer computed offline for one package's test split."""

    readings: np.ndarray  # (n, window) raw readings
    last_times: np.ndarray  # (n,) unix s of each window's last reading
    forecast: np.ndarray  # (n, horizon) raw units, from the .tflite on the trainer's own inputs


def _offline(dataset: Dataset, package: Path) -> Trained:
    test = dataset.test
    n = min(WINDOWS_PER_MODEL, len(test))
    predicted = np.asarray(predict_tflite(package / "model.tflite", test.inputs[:n])).reshape(n, -1)
    interval = dataset.calendar["interval_s"] if dataset.calendar else 3600.0
    return Trained(
        readings=denormalize(test.x[:n], dataset.normalization),
        last_times=test.times[:n].astype(np.float64) - interval,
        forecast=denormalize(predicted, dataset.normalization),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Trained]]:
    root = tmp_path_factory.mktemp("kinds")
    raw = data_mod.from_frame(generate_bts(stations=1, days=40, seed=5), "synthetic:kinds")
    registry = FilesystemRegistry(root / "registry")
    offline: dict[str, Trained] = {}
    for name, (kind, window, horizon, calendar, epochs) in PACKAGES.items():
        config = TrainConfig(
            model=kind,
            name=name,
            window=window,
            horizon=horizon,
            calendar=calendar,
            epochs=epochs,
            patience=0,
            units=8,
            out=str(root / name),
            plot="none",
        ).validate()
        result = train(config, lambda line: None, raw)
        _, _, dataset, _ = prepare(config, raw)
        offline[name] = _offline(dataset, result.package_dir)
        registry.publish(result.package_dir, promote=True)
    return root / "registry", offline


@pytest.fixture(scope="module")
def registry(trained: tuple[Path, dict[str, Trained]]) -> Path:
    return trained[0]


@pytest.fixture
def server(server_process, registry):
    tenants = {"tenant-a": {"models": dict.fromkeys(PACKAGES, "current"), "default_model": "lin48"}}
    return server_process(registry, tenants=tenants)


def test_packages_declare_lookback_horizon_and_calendar(registry: Path) -> None:
    for name, (kind, window, horizon, calendar, _) in PACKAGES.items():
        metadata = read_metadata(registry / name / "v1")
        assert metadata.training["model"] == kind
        assert metadata.window == window and metadata.horizon == horizon
        assert metadata.output.shape == [-1, horizon]
        width = window + (4 if calendar else 0)
        assert metadata.input.shape == [-1, width]
        assert bool(metadata.calendar) == calendar
        if calendar:
            assert metadata.calendar == {
                "features": ["day_sin", "day_cos", "week_sin", "week_cos"],
                "interval_s": 3600.0,
            }
        if horizon > 1:
            steps = metadata.metrics["test"]["horizon"]
            assert steps["steps"] == horizon and len(steps["mase"]) == horizon
            assert all(np.isfinite(steps["mase"]))


def test_linear_baseline_is_the_least_squares_fit(trained: tuple[Path, dict[str, Trained]]) -> None:
    """The served baseline is the OLS autoregression: refitting it here with numpy on the same
    inputs gives the same test forecasts (so `linear` is not just 'some Dense layer')."""
    raw = data_mod.from_frame(generate_bts(stations=1, days=40, seed=5), "synthetic:kinds")
    config = TrainConfig(model="linear", window=48).validate()
    _, _, dataset, _ = prepare(config, raw)
    design = np.hstack([dataset.train.x, np.ones((len(dataset.train), 1))]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, dataset.train.y.astype(np.float64), rcond=None)
    n = WINDOWS_PER_MODEL
    expected = denormalize(np.hstack([dataset.test.x[:n], np.ones((n, 1))]) @ coef, dataset.normalization)
    assert trained[1]["lin48"].forecast[:, 0] == pytest.approx(expected, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("name", list(PACKAGES))
def test_server_answers_equal_the_trainers_offline_forecast(server, mqtt_client, trained, name: str) -> None:
    offline = trained[1][name]
    _, _, horizon, calendar, _ = PACKAGES[name]
    client = mqtt_client("tenant-a")
    for i in range(len(offline.readings)):
        body: dict = {"model": name, "series": offline.readings[i].tolist()}
        if calendar:
            body["time"] = float(offline.last_times[i])
        if horizon > 1:
            body["horizon"] = horizon
        answer = client.request(body)
        assert "error" not in answer, answer
        assert answer["prediction"] == pytest.approx(float(offline.forecast[i, 0]), rel=1e-5, abs=1e-5)
        if horizon > 1:
            assert len(answer["forecast"]) == horizon
            assert answer["forecast"] == pytest.approx(offline.forecast[i].tolist(), rel=1e-5, abs=1e-5)
        else:
            assert "forecast" not in answer
    # One batched request with per-instance times answers the same, in order.
    body = {"model": name, "instances": offline.readings.tolist()}
    if calendar:
        body["times"] = offline.last_times.tolist()
    if horizon > 1:
        body["horizon"] = 3
    batched = client.request(body)
    assert "error" not in batched, batched
    assert batched["predictions"] == pytest.approx(offline.forecast[:, 0].tolist(), rel=1e-5, abs=1e-5)
    if horizon > 1:
        assert np.allclose(batched["forecasts"], offline.forecast[:, :3], rtol=1e-5, atol=1e-5)


def test_calendar_inputs_change_the_answer(server, mqtt_client, trained) -> None:
    """The server really feeds the request's time to the model: the same readings twelve hours
    apart get different forecasts (a model that ignored `time` would answer the same)."""
    offline = trained[1]["lincal"]
    client = mqtt_client("tenant-a")
    series = offline.readings[0].tolist()
    at = float(offline.last_times[0])
    first = client.request({"model": "lincal", "series": series, "time": at})
    later = client.request({"model": "lincal", "series": series, "time": at + 12 * 3600})
    assert abs(first["prediction"] - later["prediction"]) > 1e-3, (first, later)


def test_hostile_requests_get_clear_errors_and_serving_goes_on(server, mqtt_client, trained) -> None:
    offline = trained[1]["linday"]
    series = offline.readings[0].tolist()
    at = float(offline.last_times[0])
    client = mqtt_client("tenant-a")
    cases = [
        ({"model": "lincal", "series": offline.readings[0][-24:].tolist()}, "'time'"),
        ({"model": "linday", "instances": [series, series], "times": [at]}, "'times'"),
        ({"model": "linday", "instances": [series], "time": at}, "'time' goes with 'series'"),
        ({"model": "linday", "series": series, "time": at, "horizon": 13}, "exceeds"),
        ({"model": "lin48", "series": series, "horizon": 2}, "exceeds"),
        ({"model": "linday", "series": series, "time": at, "horizon": True}, "'horizon'"),
        ({"model": "linday", "series": series, "time": at, "horizon": 0}, "'horizon'"),
        ({"model": "linday", "series": series, "time": "yesterday"}, "'time'"),
        ({"model": "linday", "series": series, "time": 1e300}, "'time'"),
    ]
    for body, fragment in cases:
        answer = client.request({**body, "id": uuid.uuid4().hex})
        assert answer.get("error", {}).get("code") == "invalid_request", (body, answer)
        assert fragment in answer["error"]["message"], (fragment, answer)
    # Still serving, and plain one-step requests to a day-ahead model keep the one-step answer.
    answer = client.request({"model": "linday", "series": series, "time": at})
    assert "error" not in answer and "forecast" not in answer, answer
    assert answer["prediction"] == pytest.approx(float(offline.forecast[0, 0]), rel=1e-5, abs=1e-5)


def test_client_library_and_cli_ask_for_steps_with_a_time(server, broker, trained) -> None:
    """mlserving_client passes `time` and `horizon` through and exposes the steps; so does the CLI."""
    from mlserving_client import Client

    offline = trained[1]["linday"]
    series = offline.readings[1].tolist()
    at = float(offline.last_times[1])
    user, password = broker.credentials("tenant-a")
    client = Client(broker.host, broker.port, user, password, "tenant-a")
    try:
        answer = client.predict(series, model="linday", horizon=12, time_s=at, timeout=20)
    finally:
        client.close()
    assert answer.value == pytest.approx(float(offline.forecast[1, 0]), rel=1e-5, abs=1e-5)
    assert answer.steps == pytest.approx(offline.forecast[1].tolist(), rel=1e-5, abs=1e-5)
    done = client_cli(
        broker.host,
        broker.port,
        "predict",
        *("--tenant", "tenant-a", "--model", "linday", "--time", repr(at), "--horizon", "5"),
        *("--series-json", orjson.dumps(series).decode()),
        env={"MLSERVING_CLIENT_PASSWORD": password},
    )
    assert done.returncode == 0, done.stderr
    body = orjson.loads(done.stdout)
    assert body["forecast"] == pytest.approx(offline.forecast[1, :5].tolist(), rel=1e-5, abs=1e-5)
