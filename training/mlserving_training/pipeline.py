"""The training pipeline as functions: train a package, evaluate it, publish it.

The CLI subcommands and the trainer image's entry point (`mlserving-train pipeline`) both call
these, so a package built by hand and one built in the cluster come from the same code.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlserving_common.logs import event
from mlserving_common.package import (
    MODEL_FILE,
    UNPUBLISHED_VERSION,
    Metadata,
    TensorSpec,
    read_metadata,
    verify_package,
    write_package,
)
from mlserving_common.registries import open_registry
from mlserving_common.registry import Registry
from mlserving_training import baselines as baselines_mod
from mlserving_training import data as data_mod
from mlserving_training.cleaning import CleaningReport, CleanSeries, clean_series
from mlserving_training.config import TrainConfig
from mlserving_training.evaluate import beats_naive, horizon_metrics, naive_forecast, split_metrics
from mlserving_training.features import (
    SPLITS,
    Dataset,
    Split,
    build_dataset,
    calendar_inputs,
    denormalize,
    make_windows,
    normalize,
    split_bounds,
)
from mlserving_training.generate import generate_bts
from mlserving_training.runtime import predict_tflite
from mlserving_training.stats import input_stats

Emit = Callable[[str], None]
log = logging.getLogger("mlserving.training")


@dataclass(frozen=True)
class TrainResult:
    package_dir: Path
    metadata: Metadata
    report: CleaningReport
    plot_path: Path | None


def load_data(config: TrainConfig, emit: Emit = print) -> data_mod.RawData:
    """The configured CSV, or synthetic BTS-like data when no CSV is configured."""
    if config.data:
        return data_mod.load_csv(config.data, config.columns)
    emit(
        f"data: none configured; generating synthetic BTS data"
        f" ({config.synthetic_stations} stations, {config.synthetic_days} days, seed {config.seed})"
    )
    frame = generate_bts(
        stations=config.synthetic_stations,
        days=config.synthetic_days,
        seed=config.seed,
        shift=config.synthetic_shift,
        shift_days=config.synthetic_shift_days,
    )
    source = f"synthetic:stations={config.synthetic_stations},days={config.synthetic_days},seed={config.seed}"
    if config.synthetic_shift:
        source += f",shift={config.synthetic_shift:g}@{config.synthetic_shift_days}d"
    return data_mod.from_frame(frame, source)


def clean_rows(settings: Mapping[str, Any], rows: Any) -> tuple[CleanSeries, CleaningReport]:
    """Clean one series' rows with the cleaning settings of a TrainConfig (or a package's recorded
    config): training, the gate and `evaluate` must see the same grid, or their figures differ."""
    interval = settings.get("interval", "")
    return clean_series(
        rows,
        settings.get("sentinels", [999999.0, -999999.0]),
        settings.get("max_gap_fill", 3),
        interval_s=interval or None,
        time_unit=settings.get("time_unit", "auto"),
        duplicates=settings.get("duplicates", "last"),
        resample=settings.get("resample", "last") if interval else "",
    )


def window_lines(dataset: Dataset, window: int, min_windows: int) -> list[str]:
    """Windows per split, and a warning for each split with too few to judge a model on."""
    counts = {name: len(dataset.split(name)) for name in SPLITS}
    lines = ["windows: " + ", ".join(f"{name} {count}" for name, count in counts.items()) + f" (window {window})"]
    for name, count in counts.items():
        if count < min_windows:
            lines.append(
                f"WARNING: {name} split has only {count} window(s) (< min_windows {min_windows}):"
                " too few to judge a model; use more data, a smaller window or a coarser --interval"
            )
    return lines


def prepare(config: TrainConfig, raw: data_mod.RawData) -> tuple[str, int, Dataset, CleaningReport]:
    """Select, clean and window one series; returns (series id, its raw row count, dataset, report)."""
    series_id, rows = data_mod.select_series(raw, config.series)
    series, report = clean_rows(config.to_dict(), rows)
    dataset = build_dataset(
        series, config.window, config.train_fraction, config.val_fraction, config.horizon, config.calendar
    )
    return series_id, len(rows), dataset, report


def _framework_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import ai_edge_litert
    import keras
    import tensorflow as tf

    try:
        litert = version("ai-edge-litert")
    except PackageNotFoundError:  # pragma: no cover - metadata missing in odd installs
        litert = getattr(ai_edge_litert, "__version__", "unknown")
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "ai_edge_litert": litert,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def train(config: TrainConfig, emit: Emit = print, raw: data_mod.RawData | None = None) -> TrainResult:
    """CSV -> clean -> features -> fit -> TFLite -> parity -> metrics -> package (version v0)."""
    from mlserving_training.export import check_parity, to_tflite
    from mlserving_training.models import build_model, fit_linear, predict, seed_everything, train_model

    config.validate()
    raw = raw or load_data(config, emit)
    series_id, series_rows, dataset, report = prepare(config, raw)
    emit(f"series {series_id}: {series_rows} of {raw.rows} rows in {raw.source}")
    for line in report.lines():
        emit(line)
    for line in window_lines(dataset, config.window, config.min_windows):
        emit(line)
    emit(f"normalisation: mean={dataset.normalization.mean:.4f} std={dataset.normalization.std:.4f}")

    seed_everything(config.seed)
    extra = dataset.train.inputs.shape[1] - config.window
    model = build_model(config.model, config.window, config.units, config.horizon, extra)
    shape = (
        f"window {config.window}" + (f" + {extra} calendar inputs" if extra else "") + f" -> {config.horizon} step(s)"
    )
    if config.model == "linear":
        emit(f"fitting linear AR ({model.count_params()} parameters, {shape}) by least squares")
        outcome = fit_linear(model, dataset)
    else:
        emit(f"training {config.model} ({model.count_params()} parameters, {shape}) for up to {config.epochs} epochs")
        outcome = train_model(
            model, dataset, config.epochs, config.batch_size, config.learning_rate, config.patience, emit
        )
    emit(
        f"trained in {outcome.seconds:.1f}s ({outcome.cpu_seconds:.1f}s CPU);"
        f" best epoch {outcome.best_epoch} val_loss={outcome.best_val_loss:.6f}"
    )

    model_bytes = to_tflite(model)
    parity = check_parity(predict(model, dataset.test.inputs), model_bytes, dataset.test.inputs, config.tolerance)
    emit(
        f"tflite: {len(model_bytes)} bytes;"
        f" max |tflite - keras| on {parity.windows} test windows = {parity.max_abs_diff:.3g}"
    )

    # Metrics come from the TFLite model: that is what will serve.
    predictions = {name: predict_tflite(model_bytes, dataset.split(name).inputs) for name in ("val", "test")}
    metrics: dict[str, Any] = {
        name: split_metrics(dataset.split(name), predictions[name], dataset.normalization) for name in ("val", "test")
    }
    baselines = compare_baselines(config, raw, series_id, dataset, predictions["test"])
    if config.horizon > 1:  # MASE per step on the baselines' scale: one MASE per package
        for name in ("val", "test"):
            metrics[name]["horizon"] = horizon_metrics(
                dataset.split(name),
                predictions[name],
                dataset.normalization,
                baselines["mase_scale"],
                baselines["mase_period"],
            )
    metrics["beats_naive"] = beats_naive(metrics["test"])
    metrics["units"] = "raw"
    _emit_metrics(metrics, emit)
    metrics["baselines"] = baselines
    passed, verdict = baselines_mod.verdict(metrics["baselines"], config.gate_margin, config.model)
    metrics["verdict"] = {"beats_every_baseline": passed, "reason": verdict, "margin": config.gate_margin}
    for line in baselines_mod.table_lines(metrics["baselines"]):
        emit(line)
    emit(f"verdict: {verdict}")

    metadata = Metadata(
        name=config.model_name,
        version=UNPUBLISHED_VERSION,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        window=config.window,
        normalization=dataset.normalization,
        input=TensorSpec([-1, dataset.train.inputs.shape[1]]),
        output=TensorSpec([-1, config.horizon]),
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        series_id=series_id,
        metrics=metrics,
        data=_data_section(raw, series_rows, dataset, report),
        input_stats=input_stats(dataset.train.x),
        training={
            "model": config.model,
            "parameters": int(model.count_params()),
            "epochs_run": outcome.epochs_run,
            "best_epoch": outcome.best_epoch,
            "best_val_loss": outcome.best_val_loss,
            "seconds": round(outcome.seconds, 3),
            "cpu_seconds": round(outcome.cpu_seconds, 3),
            "history": outcome.history,
            "config": _config_record(config),
        },
        framework=_framework_versions(),
        parity=parity.to_dict(),
        horizon=config.horizon,
        calendar=dict(dataset.calendar or {}),
    )
    out = config.out_dir
    write_package(out, model_bytes, metadata)
    event(
        log,
        "package_written",
        model=metadata.name,
        package=str(out),
        series_id=series_id,
        test_mae=metrics["test"]["mae"],
        naive_mae=metrics["test"]["naive_mae"],
        beats_naive=metrics["beats_naive"],
        parity_max_abs_diff=parity.max_abs_diff,
        train_seconds=round(outcome.seconds, 3),
        epochs_run=outcome.epochs_run,
        tflite_bytes=len(model_bytes),
        cleaning=report.to_dict(),
    )
    emit(f"package written: {out} (version {UNPUBLISHED_VERSION}, publish it to get a version)")
    plot_path = config.plot_path
    if plot_path is not None:
        _plot_test(dataset, predictions["test"], plot_path, f"{config.model_name} on {series_id}")
        emit(f"plot written: {plot_path}")
    return TrainResult(out, metadata, report, plot_path)


def compare_baselines(
    config: TrainConfig, raw: data_mod.RawData, series_id: str, dataset: Dataset, test_predictions: np.ndarray
) -> dict[str, Any]:
    """The model's test-split forecasts next to every baseline on the same targets, with a backtest."""
    _, rows = data_mod.select_series(raw, series_id)
    series, _ = clean_rows(config.to_dict(), rows)
    _, b = split_bounds(len(series), config.train_fraction, config.val_fraction)
    targets = np.searchsorted(series.times, dataset.test.times)
    predicted = np.asarray(test_predictions)
    forecast = denormalize(predicted if predicted.ndim == 1 else predicted[:, 0], dataset.normalization)
    if config.model in baselines_mod.REFIT_KINDS:  # the backtest refits it per fold, as the gate does
        forecast = baselines_mod.rolling_linear(
            series, targets, config.window, b, dataset.calendar, config.backtest_folds
        )
    comparison = baselines_mod.compare(
        series, targets, config.window, b, forecast, dataset.calendar, config.backtest_folds
    )
    return comparison.to_dict()


def _emit_metrics(metrics: dict[str, Any], emit: Emit) -> None:
    for name in ("val", "test"):
        if name in metrics:
            m = metrics[name]
            emit(
                f"{name}: MAE {m['mae']:.4f} RMSE {m['rmse']:.4f} | naive MAE {m['naive_mae']:.4f}"
                f" RMSE {m['naive_rmse']:.4f} | MAE/naive {m['mae_vs_naive']:.3f} ({m['windows']} windows)"
            )
        if name in metrics and "horizon" in metrics[name]:
            h = metrics[name]["horizon"]
            emit(
                f"{name}: {h['steps']}-step MASE mean {h['mase_mean']:.3f} (period {h['mase_period']} readings);"
                f" per step {' '.join(f'{v:.2f}' for v in h['mase'])}"
            )
    if "beats_naive" in metrics:
        emit(f"beats naive on test: {'yes' if metrics['beats_naive'] else 'NO'}")


def _config_record(config: TrainConfig) -> dict[str, Any]:
    """Settings that shaped the model; paths to outputs are the caller's business."""
    record = config.to_dict()
    for key in ("out", "plot", "registry", "promote"):
        record.pop(key, None)
    return record


def _data_section(raw: data_mod.RawData, series_rows: int, dataset: Dataset, report: CleaningReport) -> dict[str, Any]:
    return {
        "source": raw.source,
        "sha256": raw.sha256,
        "rows_total": raw.rows,
        "rows_series": series_rows,
        "rows_clean": report.rows_out,
        "cleaning": report.to_dict(),
        "windows": {name: len(dataset.split(name)) for name in SPLITS},
        "time_ranges": {name: [dataset.split(name).start_time, dataset.split(name).end_time] for name in SPLITS},
    }


def _plot_test(dataset: Dataset, predictions: np.ndarray, path: Path, title: str) -> None:
    from mlserving_training.plot import plot_forecasts

    norm = dataset.normalization
    test = dataset.test
    plot_forecasts(
        test.times,
        denormalize(test.y_first, norm),
        denormalize(predictions if predictions.ndim == 1 else predictions[:, 0], norm),
        denormalize(naive_forecast(test.x), norm),
        path,
        title,
    )


def evaluate_package(
    package_dir: Path, raw: data_mod.RawData, series: str = "", split: str = "all", emit: Emit = print
) -> dict[str, Any]:
    """Score a package's .tflite with LiteRT on a CSV: every window, or the training's test split."""
    metadata = verify_package(package_dir)
    recorded = metadata.training.get("config", {})
    series_id, rows = data_mod.select_series(raw, series or metadata.series_id)
    clean, _ = clean_rows(recorded, rows)
    if split == "test":
        _, b = split_bounds(len(clean), recorded.get("train_fraction", 0.7), recorded.get("val_fraction", 0.15))
    else:
        b = 0
    scaled = normalize(clean.values[b:], metadata.normalization)
    x, y, idx = make_windows(scaled, clean.segment[b:], metadata.window, clean.target_ok[b:], metadata.horizon)
    if len(y) == 0:
        raise data_mod.DataError(f"series {series_id}: no windows of {metadata.window} readings to evaluate")
    times = clean.times[b:]
    target = Split(
        x, y, times[idx], int(clean.times[b]), int(clean.times[-1]), calendar_inputs(times[idx - 1], metadata.calendar)
    )
    result = split_metrics(
        target, predict_tflite(Path(package_dir) / MODEL_FILE, target.inputs), metadata.normalization
    )
    result["beats_naive"] = beats_naive(result)
    emit(
        f"{metadata.name} {metadata.version} on {series_id} ({split}):"
        f" MAE {result['mae']:.4f} RMSE {result['rmse']:.4f}"
        f" | naive MAE {result['naive_mae']:.4f} RMSE {result['naive_rmse']:.4f} | {result['windows']} windows"
        f" | beats naive: {'yes' if result['beats_naive'] else 'NO'}"
    )
    return result


def publish(
    package_dir: Path,
    registry_location: str,
    promote: bool = False,
    emit: Emit = print,
    registry: Registry | None = None,
) -> str:
    """`registry`: the one already opened for `registry_location` (a broker registry is a connection)."""
    if registry is None:
        with closing(open_registry(registry_location)) as opened:
            return publish(package_dir, registry_location, promote, emit, opened)
    version = registry.publish(Path(package_dir), promote=promote)
    name = read_metadata(Path(package_dir)).name
    event(log, "package_published", model=name, version=version, registry=str(registry_location), promoted=promote)
    emit(f"published {name} {version} to {registry_location}" + (" and promoted it to current" if promote else ""))
    return version
