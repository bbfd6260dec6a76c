"""Day-ahead on a real series: the Taylor half-hourly demand (tests/data_support.py), served for real.

A `linear` package with a one-week lookback (336 half-hours), calendar inputs and a 48-step
horizon is trained by our trainer on the Taylor CSV, published and served. On its test split:
- its 48-step forecasts beat the weekly seasonal naive (same half-hour last week), MASE < 1
  out of sample, and its one-step MAE is at most 0.25x the last value's (issue 16's targets);
- the server, given each window's readings and the last reading's `time`, answers all 48 steps
  equal to the trainer's offline forecast to 1e-5 (relative: demand is ~30,000 MW, float32);
- without `time` the calendar model refuses with `invalid_request`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlserving_common.registry import FilesystemRegistry
from mlserving_training import data as data_mod
from mlserving_training.config import TrainConfig
from mlserving_training.features import Dataset, denormalize
from mlserving_training.pipeline import prepare, train
from mlserving_training.runtime import predict_tflite

from data_support import taylor_frame

pytestmark = pytest.mark.slow

WINDOW, HORIZON = 336, 48
SERVED_WINDOWS = 12


@pytest.fixture(scope="module")
def day_ahead(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset, np.ndarray]:
    root = tmp_path_factory.mktemp("taylor")
    raw = data_mod.from_frame(taylor_frame(), "taylor")
    config = TrainConfig(
        model="linear",
        name="day",
        window=WINDOW,
        horizon=HORIZON,
        calendar=True,
        train_fraction=0.65,
        val_fraction=0.15,
        out=str(root / "day"),
        plot="none",
    ).validate()
    result = train(config, lambda line: None, raw)
    _, _, dataset, _ = prepare(config, raw)
    offline = np.asarray(predict_tflite(result.package_dir / "model.tflite", dataset.test.inputs))
    registry = FilesystemRegistry(root / "registry")
    registry.publish(result.package_dir, promote=True)
    return root / "registry", dataset, denormalize(offline, dataset.normalization)


def test_day_ahead_beats_the_weekly_seasonal_naive(day_ahead) -> None:
    _, dataset, forecast = day_ahead
    test = dataset.test
    actual = denormalize(test.y, dataset.normalization)
    weekly = denormalize(test.x[:, :HORIZON], dataset.normalization)  # the window starts one week back
    last = denormalize(test.x[:, -1], dataset.normalization)
    mase_vs_weekly = np.mean(np.abs(forecast - actual)) / np.mean(np.abs(weekly - actual))
    assert mase_vs_weekly < 1.0, mase_vs_weekly
    one_step = np.mean(np.abs(forecast[:, 0] - actual[:, 0])) / np.mean(np.abs(last - actual[:, 0]))
    assert one_step <= 0.25, one_step


def test_server_day_ahead_answers_equal_the_trainers(day_ahead, server_process, mqtt_client) -> None:
    registry, dataset, forecast = day_ahead
    server = server_process(registry, tenants={"tenant-a": {"models": {"day": "current"}}})
    assert server.is_ready()
    client = mqtt_client("tenant-a")
    test = dataset.test
    readings = denormalize(test.x, dataset.normalization)
    last_times = test.times.astype(np.float64) - dataset.calendar["interval_s"]
    rows = np.linspace(0, len(test) - 1, SERVED_WINDOWS).astype(int)
    for row in rows:
        answer = client.request({"series": readings[row].tolist(), "time": float(last_times[row]), "horizon": HORIZON})
        assert "error" not in answer, answer
        assert answer["forecast"] == pytest.approx(forecast[row].tolist(), rel=1e-5)
        assert answer["prediction"] == pytest.approx(float(forecast[row, 0]), rel=1e-5)
    refused = client.request({"series": readings[rows[0]].tolist(), "horizon": HORIZON})
    assert refused["error"]["code"] == "invalid_request" and "'time'" in refused["error"]["message"], refused
