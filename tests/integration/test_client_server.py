"""The client library, CLI and load generator against the real server and a real Mosquitto.

Fixtures (tests/conftest.py): `broker` with per-tenant passwords and ACLs, `server` (one real server
on v1 of the demo models: tenant-a -> lstm, tenant-b -> ann) and `connect` (library Clients of it).
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from mlserving_client import Client, LoadSpec, PredictionError, TenantTarget, run_load
from mlserving_common import protocol

from mqtt_support import client_cli

WINDOW = protocol.LEGACY_WINDOW
SERIES = [18.0, 19.5, 21.0, 22.5, 21.0, 19.5]


def cli(broker: Any, tenant: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI as a user would, password from the environment."""
    env = {"MLSERVING_CLIENT_PASSWORD": broker.credentials(tenant)[1]}
    return client_cli(broker.host, broker.port, args[0], *args[1:], env=env)


def test_round_trip_per_tenant(connect: Callable[..., Client]) -> None:
    for tenant, model in (("tenant-a", "lstm"), ("tenant-b", "ann")):
        answer = connect(tenant).predict(SERIES, timeout=10)
        assert (answer.tenant, answer.model, answer.version) == (tenant, model, "v1")
        assert isinstance(answer.value, float) and math.isfinite(answer.value)


def test_batched_request(connect: Callable[..., Client]) -> None:
    client = connect()
    single = [client.predict(s, timeout=10).value for s in (SERIES, SERIES[::-1])]
    batch = client.predict_batch([SERIES, SERIES[::-1]], timeout=10)
    assert batch == pytest.approx(single, rel=1e-5)


def test_errors_from_the_server(connect: Callable[..., Client]) -> None:
    client = connect(attempts=1)
    with pytest.raises(PredictionError) as wrong_window:
        client.predict(SERIES[:3], timeout=10)
    assert wrong_window.value.code == protocol.ErrorCode.WRONG_WINDOW
    with pytest.raises(PredictionError) as unknown:
        client.predict(SERIES, timeout=10, model="no-such-model")
    assert unknown.value.code == protocol.ErrorCode.UNKNOWN_MODEL
    assert client.predict(SERIES, timeout=10).model == "lstm"  # and valid requests keep being served


def test_many_outstanding(connect: Callable[..., Client]) -> None:
    client = connect()
    futures = [client.submit([v + i for v in SERIES]) for i in range(300)]
    answers = [f.result(timeout=60) for f in futures]
    assert len({a.id for a in answers}) == 300
    assert client.stats().duplicates == 0


def test_cli_predict(broker: Any, server: Any) -> None:
    result = cli(broker, "tenant-b", "predict", "--tenant", "tenant-b", *map(str, SERIES))
    assert result.returncode == 0, result.stderr
    body = orjson.loads(result.stdout)
    assert (body["tenant"], body["model"], body["version"]) == ("tenant-b", "ann", "v1")
    assert "prediction" in body

    batch = cli(
        broker, "tenant-b", "predict", "--tenant", "tenant-b", "--series-json", orjson.dumps([SERIES] * 3).decode()
    )
    assert batch.returncode == 0 and len(orjson.loads(batch.stdout)["predictions"]) == 3

    bad = cli(broker, "tenant-b", "predict", "--tenant", "tenant-b", "1", "2")
    assert bad.returncode == 1
    assert orjson.loads(bad.stdout)["error"]["code"] == protocol.ErrorCode.WRONG_WINDOW


def test_cli_replay(broker: Any, server: Any, tmp_path: Path) -> None:
    csv_path = tmp_path / "readings.csv"
    start = 1_704_067_200
    lines = ["station_id,parameter_id,reading_time,value"]
    lines += [f"7,1,{start + 900 * i},{20 + 5 * math.sin(i / 8):.3f}" for i in range(40)]
    csv_path.write_text("\n".join(lines) + "\n")
    summary_path, plot_path = tmp_path / "summary.json", tmp_path / "replay.png"
    result = cli(
        broker,
        "tenant-a",
        "replay",
        str(csv_path),
        "--tenant",
        "tenant-a",
        "--series",
        "7/1",
        "--summary-json",
        str(summary_path),
        "--plot",
        str(plot_path),
    )
    assert result.returncode == 0, result.stderr
    forecast_lines = [line for line in result.stdout.splitlines() if line.startswith("2024-")]
    assert len(forecast_lines) == 40 - WINDOW
    assert "MAE" in forecast_lines[-1] and "(lstm:v1)" in forecast_lines[-1]
    summary = orjson.loads(summary_path.read_bytes())
    assert summary["steps"] == summary["answered"] == 40 - WINDOW
    assert summary["versions"] == {"lstm:v1": 40 - WINDOW}
    assert math.isfinite(summary["mae"])
    assert plot_path.read_bytes()[:4] == b"\x89PNG"


def test_load_two_tenants_nothing_lost(broker: Any, server: Any) -> None:
    targets = tuple(TenantTarget(t, *broker.credentials(t)) for t in ("tenant-a", "tenant-b"))
    result = run_load(
        LoadSpec(host=broker.host, port=broker.port, targets=targets, concurrency=32, count=3000, grace=10)
    )
    c = result.counters
    assert (c.sent, c.answered, c.error_total, c.lost, c.duplicates, c.unexpected) == (3000, 3000, 0, 0, 0, 0)
    assert set(result.versions) == {"lstm:v1", "ann:v1"}


def test_cli_load_json(broker: Any, server: Any) -> None:
    a, b = broker.credentials("tenant-a")[1], broker.credentials("tenant-b")[1]
    result = cli(
        broker,
        "tenant-a",
        "load",
        "--auth",
        f"tenant-a:{a}",
        "--auth",
        f"tenant-b:{b}",
        "--rate",
        "400",
        "--duration",
        "2",
        "--batch",
        "4",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    body = orjson.loads(result.stdout)
    assert body["sent"] == body["answered"] > 0 and body["lost"] == 0 and body["error_total"] == 0
    assert {t["tenant"] for t in body["tenants"]} == {"tenant-a", "tenant-b"}
    assert body["latency"]["p99_ms"] >= body["latency"]["p50_ms"] > 0
    assert body["forecasts_per_second"] == pytest.approx(4 * body["throughput"], rel=0.01)
