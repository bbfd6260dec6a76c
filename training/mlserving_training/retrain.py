"""Retraining that can be trusted: data (CSV and/or live records) -> train -> gate -> publish [-> promote].

`mlserving-train pipeline` / `retrain` and the chart's CronJob run `run_retrain`. Every
decision is one JSON event (`retrain decision`) plus one human line with its figures; a
candidate refused by the gate is a normal outcome (exit 0), errors are not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mlserving_common.logs import event
from mlserving_common.package import read_metadata
from mlserving_common.registry import open_registry
from mlserving_training import data as data_mod
from mlserving_training import records as records_mod
from mlserving_training.cleaning import clean_series
from mlserving_training.config import STANDARD_COLUMNS, TrainConfig
from mlserving_training.gate import GateDecision, build_holdout, decide, naive_mae, package_mae
from mlserving_training.pipeline import Emit, TrainResult, evaluate_package, load_data, publish, train

log = logging.getLogger("mlserving.training.retrain")


class NotEnoughData(data_mod.DataError):
    """Records on, no bootstrap CSV and too few live readings yet: a skipped run, not a failure."""


@dataclass(frozen=True)
class RetrainOutcome:
    """What a run did: skipped (no trigger), trained but unpublished, refused, published [and promoted]."""

    action: str  # skipped | unpublished | refused | published | promoted
    decision: GateDecision | None = None
    version: str | None = None
    result: TrainResult | None = None
    reason: str = ""


def load_training_data(config: TrainConfig, drained: records_mod.Drained | None, emit: Emit) -> data_mod.RawData:
    """The bootstrap CSV (or synthetic data when records are off) plus the live history, newest last."""
    if not config.records:
        return load_data(config, emit)
    base = data_mod.load_csv(config.data, config.columns) if config.data else None
    series_id = config.series
    if not series_id:
        candidates = data_mod.list_series(base) if base is not None else sorted(drained.histories if drained else {})
        if not candidates:
            raise NotEnoughData("no bootstrap CSV (data) and no live records yet")
        series_id = candidates[0]
    after = None
    if base is not None:
        times = pd.to_numeric(base.frame["reading_time"], errors="coerce")
        mask = (base.frame["station_id"] + "/" + base.frame["parameter_id"]) == series_id
        if mask.any() and np.isfinite(times[mask]).any():
            after = int(np.nanmax(times[mask]))
    rows = records_mod.live_frame_rows(config, drained, series_id, after) if drained else []
    # Every split needs at least one window: fewer readings cannot train, so wait for more.
    needed = int((config.window + 1) / min(config.test_fraction, config.val_fraction)) + 1
    if base is None and len(rows) < needed:
        raise NotEnoughData(f"{len(rows)} live readings of {series_id} and no bootstrap CSV (data); need {needed}")
    live = pd.DataFrame(rows, columns=list(STANDARD_COLUMNS)).astype(str)
    frames = [base.frame] if base is not None else []
    frame = pd.concat([*frames, live], ignore_index=True)
    source = f"{base.source if base is not None else 'no bootstrap'} + live records ({len(rows)} readings of {series_id})"
    emit(f"data: {source}")
    return data_mod.from_frame(frame, source)


def evaluate_gate(
    config: TrainConfig, raw: data_mod.RawData, result: TrainResult, serving_dir: Path | None, serving_version: str | None
) -> GateDecision:
    """Candidate, serving version and naive forecast on the same newest holdout windows."""
    series_id, rows = data_mod.select_series(raw, result.metadata.series_id)
    clean, _ = clean_series(rows, config.sentinels, config.max_gap_fill)
    windows = [result.metadata.window]
    if serving_dir is not None:
        windows.append(read_metadata(serving_dir).window)
    holdout = build_holdout(clean, config.train_fraction, config.val_fraction, max(windows))
    candidate = package_mae(result.package_dir, holdout)
    serving = package_mae(serving_dir, holdout) if serving_dir is not None else None
    decision = decide(candidate, naive_mae(holdout), serving, config.gate_margin, serving_version, len(holdout))
    if not config.gate:
        decision = replace(decision, passed=True, reason=f"gate disabled (gate: false); {decision.reason}")
    return decision


def run_retrain(config: TrainConfig, emit: Emit = print) -> RetrainOutcome:
    """The CronJob's run; see the module docstring."""
    config.validate()
    name = config.model_name
    drained = None
    if config.uses_broker:
        drained = records_mod.drain(config, emit)
        if config.trigger == "drift":
            events = drained.drift_for(name)
            if not events:
                reason = f"trigger is 'drift' and no server reported drift for {name} since the last run"
                event(log, "retrain decision", model=name, action="skipped", reason=reason)
                emit(f"retrain {name}: skipped ({reason})")
                return RetrainOutcome("skipped", reason=reason)
            kinds = sorted({f"{e.get('kind')}@{e.get('tenant')}/{e.get('version')}" for e in events})
            emit(f"retrain {name}: {len(events)} drift event(s): {', '.join(kinds)}")

    try:
        raw = load_training_data(config, drained, emit)
    except NotEnoughData as exc:
        reason = f"nothing to train on yet: {exc}"
        event(log, "retrain decision", model=name, action="skipped", reason=reason)
        emit(f"retrain {name}: skipped ({reason})")
        return RetrainOutcome("skipped", reason=reason)
    result = train(config, emit, raw)
    evaluate_package(result.package_dir, raw, result.metadata.series_id, split="test", emit=emit)
    if not config.registry:
        emit("registry: not configured; package left unpublished")
        return RetrainOutcome("unpublished", result=result, reason="no registry configured")

    registry = open_registry(config.registry)
    serving_version = registry.current(name)
    serving_dir = registry.fetch(name, serving_version) if serving_version else None
    decision = evaluate_gate(config, raw, result, serving_dir, serving_version)
    emit(decision.line())
    common = {"model": name, "series_id": result.metadata.series_id, "data_source": raw.source, **decision.to_dict()}
    if not decision.passed:
        event(log, "retrain decision", action="refused", **common)
        emit(f"retrain {name}: candidate refused; {serving_version or 'nothing'} keeps serving; nothing published")
        return RetrainOutcome("refused", decision, result=result, reason=decision.reason)

    version = publish(result.package_dir, config.registry, config.promote, emit, registry=registry)
    action = "promoted" if config.promote else "published"
    event(log, "retrain decision", action=action, version=version, promoted=config.promote, **common)
    if not config.promote:
        emit(
            f"retrain {name}: {version} published, not promoted (promote: false). Serve it with"
            f" `helm upgrade --reuse-values --set model.version={version}` (pins every tenant) or"
            f" `mlserving-train promote --registry {config.registry} {name} {version}`"
        )
    return RetrainOutcome(action, decision, version, result, decision.reason)
