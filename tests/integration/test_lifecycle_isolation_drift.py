"""Another tenant's drift cannot start a retrain: `trigger: drift` counts drift per (tenant, model).

One server process serves lstm to tenant-a and tenant-b. tenant-a (valid credentials of its own,
normal requests only) sends windows of readings in 5,000-6,040: its live error and inputs drift
and the server publishes drift events for (tenant-a, lstm). The lstm trainer for tenant-b, with
`trigger: drift`, drains its persistent session on the real broker and skips (before: it
retrained). When tenant-b's own traffic drifts, the same trainer runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlserving_training.config import TrainConfig
from mlserving_training.records import drain
from mlserving_training.retrain import run_retrain

from lifecycle_support import send_series, series_values, windows

pytestmark = pytest.mark.slow

LIFECYCLE = {
    "live_accuracy": {"window": 100},
    "drift": {"min_scored": 50, "input_window": 600},
    "auto_rollback": {"enabled": False},
}
LSTM = {"models": {"lstm": "current"}}


def crafted_windows(count: int, base: float) -> list[list[float]]:
    """Consecutive windows of a sawtooth far outside the training range (scored like any series)."""
    readings = [base + 10.0 * (i % 105) for i in range(count + 6)]
    return [readings[i - 6 : i] for i in range(6, count + 6)]


def test_another_tenants_drift_does_not_start_a_retrain(
    broker, server_process, registry_root: Path, mqtt_client, until, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text(broker.users["trainer"].password)
    config = TrainConfig(
        model="lstm",
        name="lstm",
        trigger="drift",
        tenants=["tenant-b"],
        records_idle_seconds=1.0,
        broker_host=broker.host,
        broker_port=broker.port,
        broker_username="trainer",
        broker_password_file=str(password),
        epochs=1,
        synthetic_stations=1,
        synthetic_days=30,
        out=str(tmp_path / "pkg"),
        plot="none",
    ).validate()
    assert drain(config, emit=lambda line: None).messages == 0  # creates the session: events queue from now on

    server = server_process(registry=registry_root, tenants={"tenant-a": LSTM, "tenant-b": LSTM}, lifecycle=LIFECYCLE)
    a, b = mqtt_client("tenant-a"), mqtt_client("tenant-b")
    values = series_values()
    send_series(b, windows(values, 100, 220), "BTS001/1", "b-honest")
    send_series(a, crafted_windows(150, 5000.0), "BTS001/1", "a-crafted")
    until(lambda: server.metric("mlserving_drift", tenant="tenant-a", model="lstm", kind="error") == 1)
    assert server.metric("mlserving_drift", tenant="tenant-b", model="lstm", kind="error") == 0

    lines: list[str] = []
    outcome = run_retrain(config, emit=lines.append)
    assert outcome.action == "skipped", lines
    assert "no server reported drift for lstm of tenants tenant-b" in outcome.reason
    # tenant-a's events did reach the session: they are drained and not counted.
    assert any(re.search(r"\b[1-9]\d* drift event\(s\); live history", line) for line in lines), lines

    # tenant-b's own drift does start it (the trigger still works for the tenant it trains for).
    send_series(b, crafted_windows(150, 5000.0), "BTS002/1", "b-drift")
    until(lambda: server.metric("mlserving_drift", tenant="tenant-b", model="lstm", kind="error") == 1)
    lines.clear()
    ran = run_retrain(config, emit=lines.append)
    assert ran.action == "unpublished", (ran.reason, lines)  # trained; no registry configured here
    assert any("drift event(s)" in line and "@tenant-b/" in line for line in lines), lines
