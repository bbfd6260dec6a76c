"""A hostile tenant cannot feed another tenant's retraining, and a trainer takes only its model's records.

One server process serves tenant-a and tenant-b with `record: true` (the demo's layout). tenant-a
has valid credentials of its own and sends normal requests only: 105 crafted readings in
5,000-6,040 under tenant-b's series id `BTS001/1`, and a series `!!!/1` that sorts before any
other. tenant-b sends its honest BTS001/1 (lstm) and BTS002/1 (ann). Trainers drain their own
persistent sessions from the real broker:

- lstm for tenant-b: sees tenant-b's BTS001/1 only (not one crafted reading); with no `series`
  set it trains on tenant-b's series, not on tenant-a's `!!!/1`;
- ann for tenant-b: sees tenant-b's ann records only, none of the lstm ones;
- lstm for both tenants: two separate series (tenant-a, BTS001/1) and (tenant-b, BTS001/1),
  never one mixed history;
- no tenants named: refused as a setting (never "every tenant").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlserving_training.config import ConfigError, TrainConfig
from mlserving_training.records import drain
from mlserving_training.retrain import load_training_data

from lifecycle_support import send_series, series_values, windows

CRAFTED = [[5000.0 + 10.0 * (i + j) for j in range(6)] for i in range(100)]  # readings 5,000..6,040


def trainer(broker, password: Path, name: str, tenants: list[str]) -> TrainConfig:
    """A trainer of model `name` for `tenants`, on a session of its own (the default id plus the tenants)."""
    config = TrainConfig(
        model=name,
        name=name,
        records=True,
        tenants=tenants,
        records_idle_seconds=1.0,
        broker_host=broker.host,
        broker_port=broker.port,
        broker_username="trainer",
        broker_password_file=str(password),
    )
    return config.merged({"client_id": f"{config.session_client_id}-{'-'.join(tenants)}"}, "test").validate()


def test_trainers_take_only_their_tenants_and_models_records(
    broker, server_process, registry_root: Path, mqtt_client, until, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text(broker.users["trainer"].password)
    lstm_b = trainer(broker, password, "lstm", ["tenant-b"])
    ann_b = trainer(broker, password, "ann", ["tenant-b"])
    lstm_ab = trainer(broker, password, "lstm", ["tenant-a", "tenant-b"])
    for config in (lstm_b, ann_b, lstm_ab):
        assert drain(config, emit=lambda line: None).messages == 0  # creates the persistent sessions

    both = {"models": {"lstm": "current", "ann": "current"}, "default_model": "lstm", "record": True}
    server = server_process(registry=registry_root, tenants={"tenant-a": both, "tenant-b": both})
    a, b = mqtt_client("tenant-a"), mqtt_client("tenant-b")
    values = series_values()
    send_series(b, windows(values, 100, 200), "BTS001/1", "b-lstm")
    send_series(a, CRAFTED, "BTS001/1", "a-crafted")
    send_series(a, windows(values, 300, 400), "!!!/1", "a-first")
    send_series(b, windows(values, 400, 450), "BTS002/1", "b-ann", model="ann")
    until(lambda: server.metric("mlserving_records_published_total") == 350)

    honest = [float(v) for v in values[94:199]]  # the 105 readings of tenant-b's 100 windows
    drained = drain(lstm_b, emit=lambda line: None)
    assert set(drained.histories) == {("tenant-b", "BTS001/1")}
    assert drained.histories[("tenant-b", "BTS001/1")].segments == [honest]
    assert drained.ignored["other_tenant"] == 0  # tenant-a's records were not even delivered
    assert drained.ignored["other_model"] == 50  # tenant-b's ann records: not the lstm trainer's
    raw = load_training_data(lstm_b, drained, emit=lambda line: None)  # no `series`: the first of tenant-b's
    trained_on = raw.frame["value"].astype(float)
    assert set(raw.frame["station_id"] + "/" + raw.frame["parameter_id"]) == {"BTS001/1"}
    assert trained_on.max() < 100 and len(trained_on) == 105
    assert "tenant-b:BTS001/1" in raw.source

    drained_ann = drain(ann_b, emit=lambda line: None)
    assert set(drained_ann.histories) == {("tenant-b", "BTS002/1")}
    assert drained_ann.ignored["other_model"] == 100  # tenant-b's lstm records: not the ann trainer's
    assert max(max(s) for s in drained_ann.histories[("tenant-b", "BTS002/1")].segments) < 100

    drained_ab = drain(lstm_ab, emit=lambda line: None)
    assert set(drained_ab.histories) == {("tenant-a", "BTS001/1"), ("tenant-a", "!!!/1"), ("tenant-b", "BTS001/1")}
    assert drained_ab.histories[("tenant-b", "BTS001/1")].segments == [honest]
    crafted = drained_ab.histories[("tenant-a", "BTS001/1")].segments
    assert len(crafted) == 1 and min(crafted[0]) == 5000.0 and max(crafted[0]) == 6040.0
    # Named first, tenant-a's series is the one this trainer takes when both hold the id.
    assert (
        "tenant-a:BTS001/1"
        in load_training_data(lstm_ab.merged({"series": "BTS001/1"}, "test"), drained_ab, emit=lambda line: None).source
    )

    with pytest.raises(ConfigError, match=r"^tenants:"):
        TrainConfig(records=True, broker_host=broker.host).validate()
