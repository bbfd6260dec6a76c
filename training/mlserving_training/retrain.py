"""Retraining that can be trusted: data (CSV and/or live records) -> train -> gate -> publish [-> promote].

`mlserving-train pipeline` / `retrain` and the chart's CronJob run `run_retrain`. Every
decision is one JSON event (`retrain decision`) plus one human line with its figures; a
candidate refused by the gate is a normal outcome (exit 0), errors are not.
"""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlserving_common.logs import event
from mlserving_common.package import Metadata, read_metadata
from mlserving_common.registries import open_registry
from mlserving_training import baselines as baselines_mod
from mlserving_training import data as data_mod
from mlserving_training import records as records_mod
from mlserving_training.config import STANDARD_COLUMNS, TrainConfig
from mlserving_training.features import split_bounds
from mlserving_training.gate import (
    GateDecision,
    GateError,
    backtest_forecast,
    build_holdout,
    decide,
    override,
    publish_on_record,
)
from mlserving_training.pipeline import Emit, TrainResult, clean_rows, evaluate_package, load_data, train

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
        live_ids = sorted({s for _, s in drained.histories}) if drained else []
        candidates = data_mod.list_series(base) if base is not None else live_ids
        if not candidates:
            raise NotEnoughData("no bootstrap CSV (data) and no live records yet")
        series_id = candidates[0]
    key = live_series_key(config, drained, series_id)
    after = None
    if base is not None:
        times = pd.to_numeric(base.frame["reading_time"], errors="coerce")
        mask = (base.frame["station_id"] + "/" + base.frame["parameter_id"]) == series_id
        if mask.any() and np.isfinite(times[mask]).any():
            after = int(np.nanmax(times[mask]))
    rows = records_mod.live_frame_rows(config, drained, key, after) if drained and key else []
    # Every split needs at least one window: fewer readings cannot train, so wait for more.
    needed = int((config.window + 1) / min(config.test_fraction, config.val_fraction)) + 1
    if base is None and len(rows) < needed:
        raise NotEnoughData(f"{len(rows)} live readings of {series_id} and no bootstrap CSV (data); need {needed}")
    live = pd.DataFrame(rows, columns=list(STANDARD_COLUMNS)).astype(str)
    frames = [base.frame] if base is not None else []
    frame = pd.concat([*frames, live], ignore_index=True)
    of = records_mod.series_label(key) if key else series_id
    source = f"{base.source if base is not None else 'no bootstrap'} + live records ({len(rows)} readings of {of})"
    emit(f"data: {source}")
    return data_mod.from_frame(frame, source)


def live_series_key(
    config: TrainConfig, drained: records_mod.Drained | None, series_id: str
) -> records_mod.SeriesKey | None:
    """The live series to train on: `series_id` of the first tenant in `config.tenants` that has
    it. One series is one tenant's: two tenants' readings under the same id are never joined."""
    if drained is None:
        return None
    for tenant in config.tenants:
        if (tenant, series_id) in drained.histories:
            return (tenant, series_id)
    return None


def evaluate_gate(
    config: TrainConfig,
    raw: data_mod.RawData,
    candidate_dir: Path,
    serving_dir: Path | None,
    serving_version: str | None,
) -> GateDecision:
    """Candidate, serving version, naive and every baseline on the same newest holdout targets,
    as backtest means over `config.backtest_folds` rolling-origin folds (mlserving_training.baselines)."""
    candidate = read_metadata(candidate_dir)
    _, rows = data_mod.select_series(raw, candidate.series_id)
    clean, _ = clean_rows(config.to_dict(), rows)
    windows = [candidate.window]
    if serving_dir is not None:
        windows.append(read_metadata(serving_dir).window)
    holdout = build_holdout(clean, config.train_fraction, config.val_fraction, max(windows))
    _, start = split_bounds(len(clean), config.train_fraction, config.val_fraction)
    comparison = baselines_mod.compare(
        clean,
        holdout.targets,
        candidate.window,
        start,
        backtest_forecast(candidate_dir, holdout, clean, start, config.backtest_folds),
        candidate.calendar or None,
        config.backtest_folds,
    )
    table = comparison.to_dict()
    kind = candidate.training.get("config", {}).get("model", "")
    mean = {
        name: table["candidates"][name]["backtest_mae_mean"] for name in ["model", *baselines_mod.rivals(table, kind)]
    }
    serving = None
    if serving_dir is not None:
        kept = np.isin(holdout.targets, comparison.targets)
        error = np.abs(
            backtest_forecast(serving_dir, holdout, clean, start, config.backtest_folds)[kept] - comparison.actual
        )
        serving = float(np.mean([np.mean(error[f]) for f in comparison.folds]))
    others = {name: mae for name, mae in mean.items() if name not in ("model", "naive")}
    if config.gate_baselines == "naive":
        others = {}
    decision = decide(
        mean["model"], mean["naive"], serving, config.gate_margin, serving_version, len(comparison.targets), others
    )
    if config.gate_baselines == "naive":
        decision = replace(decision, reason=f"{decision.reason} (gate_baselines: naive, the others not required)")
    if not config.gate:
        decision = override(decision, "gate disabled (gate: false)", model=candidate.name, package=str(candidate_dir))
    return decision


def recorded_config(metadata: Metadata, **overrides: Any) -> TrainConfig:
    """The TrainConfig a package was trained with (its metadata.training.config), plus overrides."""
    known = set(TrainConfig.model_fields)
    recorded = {k: v for k, v in metadata.training.get("config", {}).items() if k in known}
    return TrainConfig().merged(
        {**recorded, **{k: v for k, v in overrides.items() if v is not None}}, source=f"{metadata.name} metadata"
    )


def publish_promote_gated(
    package_dir: Path,
    registry_location: str,
    data: str = "",
    margin: float | None = None,
    force: bool = False,
    emit: Emit = print,
    version: str | None = None,
) -> str | None:
    """`publish --promote`, and `promote` of a `version` already published: the CronJob's gate on
    the package's own training data (or `data`). Returns the version promoted.

    Passed: published and promoted (`version`: the pointer moves to it). Refused: nothing changes
    (None), unless `force`: then it is promoted anyway, logged as `gate_forced` and recorded in
    metadata.gate (forced: true); a forced `version` is published again as a copy carrying that
    record (`copy_of`), because a published version never changes.
    """
    metadata = read_metadata(package_dir)
    config = recorded_config(metadata, data=data or None, gate_margin=margin, gate=True)
    raw = load_data(config, emit)
    recorded_sha = metadata.data.get("sha256")
    if not data and recorded_sha and raw.sha256 != recorded_sha:
        raise GateError(
            f"{metadata.name}: its training data {raw.source} changed since training"
            " (sha256 differs); pass --data with the CSV to judge it on"
        )
    with closing(open_registry(registry_location)) as registry:
        serving_version = registry.current(metadata.name)
        serving_dir = registry.fetch(metadata.name, serving_version) if serving_version else None
        decision = evaluate_gate(config, raw, Path(package_dir), serving_dir, serving_version)
        if force:
            decision = override(decision, "--force", model=metadata.name, package=str(package_dir))
        emit(decision.line())
        door = "promote" if version else "publish"
        common = {
            "model": metadata.name,
            "series_id": metadata.series_id,
            "data_source": raw.source,
            **decision.to_dict(),
        }
        if not decision.admitted:
            event(log, f"{door} decision", action="refused", **common)
            emit(
                f"{door} {metadata.name}: refused by the gate; {serving_version or 'nothing'} keeps serving;"
                f" {'not promoted' if version else 'nothing published'} (--force promotes anyway, on record)"
            )
            return None
        if version and decision.passed:
            registry.promote(metadata.name, version)
            promoted = version
        else:
            note = {"copy_of": version} if version else {}
            promoted = publish_on_record(Path(package_dir), decision, registry, registry_location, True, emit, **note)
        event(log, f"{door} decision", action="promoted", version=promoted, **common)
        return promoted


def run_retrain(config: TrainConfig, emit: Emit = print) -> RetrainOutcome:
    """The CronJob's run; see the module docstring."""
    config.validate()
    name = config.model_name
    drained = None
    if config.uses_broker:
        drained = records_mod.drain(config, emit)
        if config.trigger == "drift":
            events = drained.drift_for(name, config.tenants)
            if not events:
                reason = (
                    f"trigger is 'drift' and no server reported drift for {name} of tenants"
                    f" {', '.join(config.tenants)} since the last run"
                )
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

    with closing(open_registry(config.registry)) as registry:
        serving_version = registry.current(name)
        serving_dir = registry.fetch(name, serving_version) if serving_version else None
        decision = evaluate_gate(config, raw, result.package_dir, serving_dir, serving_version)
        emit(decision.line())
        common = {
            "model": name,
            "series_id": result.metadata.series_id,
            "data_source": raw.source,
            **decision.to_dict(),
        }
        if not decision.admitted:
            event(log, "retrain decision", action="refused", **common)
            emit(f"retrain {name}: candidate refused; {serving_version or 'nothing'} keeps serving; nothing published")
            return RetrainOutcome("refused", decision, result=result, reason=decision.reason)

        version = publish_on_record(result.package_dir, decision, registry, config.registry, config.promote, emit)
        action = "promoted" if config.promote else "published"
        event(log, "retrain decision", action=action, version=version, promoted=config.promote, **common)
        if not config.promote:
            emit(
                f"retrain {name}: {version} published, not promoted (promote: false). Serve it with"
                f" `helm upgrade --reuse-values --set model.version={version}` (pins every tenant) or"
                f" `mlserving-train promote --registry {config.registry} {name} {version}`"
            )
        return RetrainOutcome(action, decision, version, result, decision.reason)
