"""What the lifecycle integration tests share: live series to send, a scrambled package, metric reads.

A module with its own name (not conftest) so test modules can import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlserving_common.package import read_metadata, write_package
from mlserving_training.cleaning import clean_series
from mlserving_training.generate import CLEAN, generate_bts


def series_values(stations: int = 1, days: int = 60, seed: int = 7, **shift: Any) -> np.ndarray:
    """Readings of BTS001/1 as the generator makes them (clean: every hour present)."""
    frame = generate_bts(stations=stations, days=days, seed=seed, rates=CLEAN, **shift)
    rows = frame[frame["station_id"] == "BTS001"]
    clean, _ = clean_series(rows)
    return np.round(clean.values, 3)


def windows(values: np.ndarray, start: int, stop: int, window: int = 6) -> list[list[float]]:
    """Consecutive windows whose targets are values[start:stop] (window i ends right before target i)."""
    return [[float(v) for v in values[i - window : i]] for i in range(start, stop)]


def send_series(
    client: Any,
    windows_: list[list[float]],
    series_id: str,
    prefix: str,
    model: str | None = None,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Send the windows of one live series in order and return the answers in the same order."""
    ids = [f"{prefix}-{i}" for i in range(len(windows_))]
    for request_id, window in zip(ids, windows_, strict=True):
        body = {"id": request_id, "series": window, "series_id": series_id}
        if model is not None:
            body["model"] = model
        client.send(body)
    assert client.wait_for(ids, timeout), f"{sum(i not in client.answers for i in ids)} of {len(ids)} unanswered"
    return [client.answers[i][0].body for i in ids]


def scrambled_package(good: Path, out: Path, seed: int = 123) -> Path:
    """A package like `good` (same metadata, normalisation, window) whose dense weights are
    permuted random values: it loads, answers finite numbers, and forecasts badly."""
    from mlserving_training.export import to_tflite
    from mlserving_training.models import build_model, seed_everything

    metadata = read_metadata(good)
    config = metadata.training.get("config", {})
    seed_everything(seed)
    model = build_model(metadata.training.get("model", "ann"), metadata.window, int(config.get("units", 32)))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.permutation(w.ravel()).reshape(w.shape) for w in model.get_weights()])
    model_bytes = to_tflite(model)
    scrambled = dataclasses.replace(
        metadata,
        version="v0",
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        training={**metadata.training, "scrambled_from": metadata.version},
    )
    write_package(out, model_bytes, scrambled)
    return out


def metric(server: Any, name: str, **labels: str) -> float:
    return server.metric(name, **labels)


def log_events(server: Any, name: str) -> list[dict[str, Any]]:
    events = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            try:
                body = json.loads(line)
            except ValueError:
                continue
            if body.get("event") == name:
                events.append(body)
    return events


def serving_version(server: Any, model: str, spec: str = "current") -> str | None:
    _status, body = server.get("/readyz")
    return json.loads(body)["versions"].get(f"{model}:{spec}")


def monotonic() -> float:
    return time.monotonic()


def send_one_by_one(
    client: Any, windows_: list[list[float]], series_id: str, prefix: str, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Like send_series but waits for each answer: every request is a batch of one, so two
    servers' answers can be compared bit for bit."""
    answers = []
    for i, window in enumerate(windows_):
        answers.append(client.request({"id": f"{prefix}-{i}", "series": window, "series_id": series_id}, timeout))
    return answers
