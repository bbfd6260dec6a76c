"""Live records with several replicas: each replica sees part of a series, the trainer gets it whole.

Two server replicas share tenant-a's requests (round-robin shared subscription), so each sees
every other window of the series. Both score their forecasts (shift 2 still overlaps) and
publish what they answered; the trainer's persistent session queues the records while it is
offline, drains them, stitches one series back out of both replicas' windows, and keeps it
bounded as a retained history on the broker.
"""

from __future__ import annotations

from pathlib import Path

from mlserving_training.config import TrainConfig
from mlserving_training.records import drain

from lifecycle_support import send_series, series_values, windows

TENANTS = {"tenant-a": {"models": {"lstm": "current"}, "record": True}}
KEY = ("tenant-a", "BTS001/1")  # a live series is (tenant, series_id)


def test_two_replicas_record_one_series_that_the_trainer_stitches_back(
    broker, server_process, registry_root: Path, mqtt_client, until, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text(broker.users["trainer"].password)
    config = TrainConfig(
        name="lstm",
        series="BTS001/1",
        records=True,
        tenants=["tenant-a"],
        records_max=150,
        records_idle_seconds=1.0,
        broker_host=broker.host,
        broker_port=broker.port,
        broker_username="trainer",
        broker_password_file=str(password),
    ).validate()
    first = drain(config, emit=lambda line: None)  # creates the persistent session
    assert first.session_present is False and first.messages == 0

    replicas = [server_process(registry=registry_root, tenants=TENANTS, name=f"replica-{i}") for i in (1, 2)]
    client = mqtt_client("tenant-a")
    values = series_values()
    send_series(client, windows(values, 100, 300), "BTS001/1", "live")
    until(lambda: sum(r.metric("mlserving_records_published_total") for r in replicas) == 200)
    published = [r.metric("mlserving_records_published_total", tenant="tenant-a") for r in replicas]
    assert all(p > 0 for p in published)  # both replicas took part
    # Each replica scored what it could see: windows two apart still overlap.
    until(lambda: sum(r.metric("mlserving_live_scored_total", role="serving") for r in replicas) >= 190)

    drained = drain(config, emit=lambda line: None)
    assert drained.session_present and drained.new_windows == {KEY: 200}
    history = drained.histories[KEY]
    where = describe(history, values)
    assert len(history.segments) == 1, where  # one series, whichever replica answered which window
    # Windows with targets 100..299 hold readings 94..298: 205 readings, the newest 150 kept.
    assert history.segments[0] == [float(v) for v in values[299 - 150 : 299]], where
    assert drained.rotated == {KEY: 55}

    # The next drain continues the retained history with only the new records.
    send_series(client, windows(values, 300, 320), "BTS001/1", "more")
    until(lambda: sum(r.metric("mlserving_records_published_total") for r in replicas) == 220)
    again = drain(config, emit=lambda line: None)
    assert again.new_windows == {KEY: 20}
    assert again.histories[KEY].segments == [[float(v) for v in values[319 - 150 : 319]]], describe(
        again.histories[KEY], values
    )
    # Requests without a series_id are answered but neither recorded nor scored.
    client.request({"series": windows(values, 400, 401)[0]})
    assert sum(r.metric("mlserving_records_published_total") for r in replicas) == 220


def describe(history, values) -> str:
    """Where each stitched segment sits in the original series (for failure messages)."""
    flat = [float(v) for v in values]
    out = []
    for segment in history.segments:
        starts = [i for i in range(len(flat) - 5) if flat[i : i + 6] == segment[:6]]
        out.append(f"segment of {len(segment)} starting at {starts}")
    return "; ".join(out)
