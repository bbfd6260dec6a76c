"""Drift end to end: a level shift raises the drift signals, a retrain on live records brings live error down.

Real pieces only: a model trained by our code on the data before the shift, a server recording
the live series it answers (`record: true`), the trainer's persistent MQTT session queueing
those records and the server's drift event, `run_retrain` with `trigger: drift` draining them,
the quality gate comparing the candidate with the serving version on the newest live
readings, promotion, and the server scoring the new version on the next live readings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlserving_common.registry import FilesystemRegistry
from mlserving_training.cli import main
from mlserving_training.config import TrainConfig
from mlserving_training.generate import CLEAN, generate_bts, write_csv
from mlserving_training.retrain import run_retrain

from lifecycle_support import log_events, send_series, series_values, serving_version, windows

pytestmark = pytest.mark.slow

SERIES = "BTS001/1"
DAYS, SHIFT_DAYS, SHIFT = 130, 65, 1.0  # the level doubles over the newest 65 days
CUT = (DAYS - SHIFT_DAYS) * 24  # index of the first shifted reading
LIFECYCLE = {
    "live_accuracy": {"window": 200},
    "drift": {"error_factor": 1.5, "min_scored": 100, "psi_threshold": 0.25, "input_window": 1200},
    "auto_rollback": {"enabled": True, "margin": 0.2, "min_scored": 100},
}
# The subject here is drift, not forecast quality: the gate requires beating naive and the serving
# version only (an 8-epoch network loses to the linear AR baselines on this data).
TRAIN = dict(
    model="ann",
    series=SERIES,
    epochs=8,
    batch_size=32,
    learning_rate=3e-3,
    patience=3,
    seed=7,
    plot="none",
    gate_baselines="naive",
)


def test_level_shift_raises_drift_and_retraining_on_live_records_recovers(
    broker, server_process, mqtt_client, until, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = series_values(days=DAYS, seed=21, shift=SHIFT, shift_days=SHIFT_DAYS)
    registry_root = tmp_path / "registry"
    registry = FilesystemRegistry(registry_root)

    # v1: trained on the readings before the shift (a bootstrap CSV), through the gate.
    frame = generate_bts(stations=1, days=DAYS, seed=21, rates=CLEAN, shift=SHIFT, shift_days=SHIFT_DAYS)
    before = frame[frame["reading_time"].astype(int) < int(frame["reading_time"].astype(int).min()) + CUT * 3600]
    csv = write_csv(before, tmp_path / "before-shift.csv")
    first = run_retrain(
        TrainConfig(
            **TRAIN, data=str(csv), registry=str(registry_root), promote=True, out=str(tmp_path / "pkg1")
        ).validate(),
        emit=lambda line: None,
    )
    assert first.action == "promoted" and registry.current("ann") == "v1"

    # The trainer's persistent session exists before live traffic starts (the first drain creates it).
    password = tmp_path / "trainer-password"
    password.write_text(broker.users["trainer"].password)
    session = dict(
        records=True,
        trigger="drift",
        tenants=["tenant-a"],
        broker_host=broker.host,
        broker_port=broker.port,
        broker_username="trainer",
        broker_password_file=str(password),
        records_idle_seconds=1.5,
    )
    trainer_yaml = tmp_path / "trainer.yaml"
    trainer_yaml.write_text("".join(f"{k}: {v}\n" for k, v in {**TRAIN, **session}.items()))
    assert main(["records", "--config", str(trainer_yaml)]) == 0
    assert "(new)" in capsys.readouterr().out
    # With trigger=drift and no drift event queued, a scheduled run does nothing.
    skipped = run_retrain(
        TrainConfig(**TRAIN, **session, registry=str(registry_root)).validate(), emit=lambda line: None
    )
    assert skipped.action == "skipped" and "no server reported drift" in skipped.reason

    server = server_process(
        registry=registry_root,
        lifecycle=LIFECYCLE,
        tenants={"tenant-a": {"models": {"ann": "current"}, "record": True}},
    )
    client = mqtt_client("tenant-a")

    # Before the drift: the last 10 days before the shift.
    send_series(client, windows(values, CUT - 240, CUT), SERIES, "a")
    until(lambda: server.metric("mlserving_live_scored_total", version="v1") >= 239)
    mae_before = server.metric("mlserving_live_mae", version="v1", role="serving")
    assert server.metric("mlserving_drift", version="v1", kind="error") == 0
    assert server.metric("mlserving_drift", version="v1", kind="input") == 0
    psi_before = server.metric("mlserving_input_psi", version="v1")

    # The shift: 45 days of doubled level.
    send_series(client, windows(values, CUT, CUT + 45 * 24), SERIES, "b")
    until(lambda: server.metric("mlserving_live_scored_total", version="v1") >= 239 + 45 * 24)
    mae_drift = server.metric("mlserving_live_mae", version="v1", role="serving")
    psi_drift = server.metric("mlserving_input_psi", version="v1")
    assert server.metric("mlserving_drift", version="v1", kind="input") == 1
    assert server.metric("mlserving_drift", version="v1", kind="error") == 1
    detected = {e["kind"]: e for e in log_events(server, "drift detected")}
    assert set(detected) == {"error", "input"} and detected["error"]["reference_mae"] > 0
    assert mae_drift > 1.5 * mae_before

    # Retraining with trigger=drift: the drained drift event triggers it; live records are the data.
    config = TrainConfig(**TRAIN, **session, registry=str(registry_root), promote=True, out=str(tmp_path / "pkg2"))
    lines: list[str] = []
    outcome = run_retrain(config.validate(), emit=lines.append)
    assert any("drift event" in line for line in lines), lines
    assert any("live records" in line for line in lines), lines
    decision = outcome.decision
    assert outcome.action == "promoted" and outcome.version == "v2", "\n".join(lines)
    assert decision.serving_version == "v1" and decision.candidate_mae < decision.serving_mae
    assert outcome.result.metadata.data["rows_series"] >= 45 * 24  # trained on the live series
    until(lambda: serving_version(server, "ann") == "v2")

    # After the retrain: the next 15 days, answered and scored with v2.
    send_series(client, windows(values, CUT + 45 * 24, CUT + 60 * 24), SERIES, "c")
    until(lambda: server.metric("mlserving_live_scored_total", version="v2") >= 15 * 24 - 1)
    mae_after = server.metric("mlserving_live_mae", version="v2", role="serving")
    psi_after = server.metric("mlserving_input_psi", version="v2")
    assert mae_after < mae_drift / 2
    assert server.metric("mlserving_drift", version="v2", kind="error") == 0
    assert server.metric("mlserving_auto_rollbacks_total") == 0  # v2 is better than v1 was: kept

    drifts = log_events(server, "drift detected")
    with capsys.disabled():
        print(
            f"\nlive MAE (kW, last {LIFECYCLE['live_accuracy']['window']} scored forecasts): before drift v1"
            f" {mae_before:.3f} | after the level shift v1 {mae_drift:.3f} | after retrain v2 {mae_after:.3f}"
            f"\ninput PSI: before {psi_before:.3f} | after shift {psi_drift:.3f} | v2 {psi_after:.3f}"
            f"\ngate: {decision.line()}"
            f"\ndrift events: {[(e['version'], e['kind'], e.get('psi', e.get('live_mae'))) for e in drifts]}"
        )
