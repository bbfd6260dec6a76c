"""`mlserving-train`: generate data, train, evaluate, publish and manage model versions.

Heavy imports (TensorFlow, pandas) happen inside the subcommands, so --help is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from mlserving_training.config import MODEL_KINDS, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: `promote --require-shadow-better` declined: a normal answer, but scripts must tell it apart.
EXIT_REFUSED = 3


def _emit(line: str) -> None:
    print(line, flush=True)


def _log_event(name: str, **fields: Any) -> None:
    import logging

    from mlserving_common.logs import event

    event(logging.getLogger("mlserving.training"), name, **fields)


def _column_pairs(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    pairs = {}
    for item in items:
        standard, sep, name = item.partition("=")
        if not sep:
            raise ConfigError(f"columns: {item!r} must look like standard=csv_name, e.g. reading_time=ts")
        pairs[standard.strip()] = name.strip()
    return pairs


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `pipeline`; each overrides the YAML file and environment."""
    parser.add_argument("--config", help="YAML file of TrainConfig settings (also MLSERVING_TRAIN_CONFIG)")
    parser.add_argument("--data", help="BTS CSV (station_id, parameter_id, reading_time, value); empty = synthetic")
    parser.add_argument("--column", action="append", metavar="STANDARD=CSV_NAME", help="map a column name (repeatable)")
    parser.add_argument("--series", help="series to train on, 'station_id/parameter_id' (default: the first)")
    parser.add_argument(
        "--model",
        choices=list(MODEL_KINDS),
        help="model kind (default lstm; linear = AR baseline; hybrid = AR + residual net)",
    )
    parser.add_argument("--name", help="registry model name (default: the model kind)")
    parser.add_argument("--window", type=int, help="readings per input window, the lookback (default 6; e.g. 48-336)")
    parser.add_argument(
        "--horizon", type=int, help="readings forecast per inference (default 1; 48 = day-ahead half-hourly)"
    )
    parser.add_argument(
        "--calendar",
        action="store_true",
        default=None,
        help="add time-of-day and day-of-week inputs (the server computes them from the request's 'time')",
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs (default 30)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--patience", type=int, help="early-stopping patience in epochs, 0 = off (default 5)")
    parser.add_argument("--seed", type=int, help="random seed (default 42)")
    parser.add_argument("--units", type=int, help="LSTM units / dense width (default 32)")
    parser.add_argument("--train-fraction", type=float, help="oldest share of the series for training (0.7)")
    parser.add_argument("--val-fraction", type=float, help="next share for validation (0.15); the rest is test")
    parser.add_argument("--tolerance", type=float, help="max |TFLite - Keras| allowed before refusing (1e-4)")
    parser.add_argument(
        "--interval",
        help="sampling grid, e.g. 60s, 30min, 1h (default: the most common step);"
        " readings are resampled to it by --resample",
    )
    parser.add_argument("--resample", choices=["last", "mean"], help="value per --interval: last or mean (last)")
    parser.add_argument(
        "--time-unit",
        choices=["auto", "s", "ms", "us", "ns", "iso"],
        help="reading_time unit (default auto: from the magnitude, or ISO 8601 text)",
    )
    parser.add_argument(
        "--duplicates",
        choices=["last", "mean"],
        help="readings sharing a second: keep the last or average them (default last)",
    )
    parser.add_argument("--out", help="package directory to write (default packages/<name>)")
    parser.add_argument("--plot", help="forecast PNG path (default <out>-forecast.png; 'none' disables)")


def _train_overrides(args: argparse.Namespace) -> dict[str, object]:
    keys = [
        "data",
        "series",
        "model",
        "name",
        "window",
        "horizon",
        "calendar",
        "epochs",
        "batch_size",
        "learning_rate",
        "patience",
        "seed",
        "units",
        "train_fraction",
        "val_fraction",
        "tolerance",
        "out",
        "plot",
        "interval",
        "resample",
        "time_unit",
        "duplicates",
    ]
    overrides = {key: getattr(args, key) for key in keys}
    overrides["columns"] = _column_pairs(args.column)
    for key in ("registry", "promote", "records", "trigger", "gate_margin", "tenants"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if getattr(args, "no_gate", False):
        overrides["gate"] = False
    return overrides


def _add_retrain_options(parser: argparse.ArgumentParser) -> None:
    """Flags of `pipeline` / `retrain` on top of the training ones."""
    _add_train_options(parser)
    parser.add_argument("--registry", help="registry root to publish to (MLSERVING_TRAIN_REGISTRY)")
    parser.add_argument("--promote", action="store_true", default=None, help="promote when the gate passes")
    parser.add_argument("--gate-margin", type=float, help="candidate MAE must be <= serving MAE x (1 - margin) (0)")
    parser.add_argument("--no-gate", action="store_true", help="publish without the quality gate (bootstrap only)")
    parser.add_argument(
        "--records",
        action="store_true",
        default=None,
        help="add live-traffic records drained from the broker (broker_* settings)",
    )
    parser.add_argument(
        "--trigger",
        choices=["schedule", "drift"],
        help="schedule: train every run; drift: only after a server's drift event (default schedule)",
    )
    _add_tenant_option(parser)


def _add_tenant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant",
        dest="tenants",
        action="append",
        default=None,
        help="a tenant whose live records and drift events to use (repeatable; required with"
        " --records or --trigger drift unless the config names them)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlserving-train",
        description="Train time-series forecasters into verified TFLite packages and manage a model registry.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="write a CSV of synthetic BTS-like data")
    p.add_argument("--stations", type=int, default=3, help="number of stations (default 3)")
    p.add_argument("--days", type=int, default=120, help="days of hourly readings (default 120)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--clean", action="store_true", help="no gaps, sentinels or bad rows")
    p.add_argument(
        "--shift",
        type=float,
        default=0.0,
        help="inject a level shift of this fraction of the level (e.g. 0.5) into the newest --shift-days",
    )
    p.add_argument("--shift-days", type=int, default=0, help="days at the end affected by --shift")
    p.add_argument("--out", required=True, help="CSV path to write")

    p = sub.add_parser("train", help="CSV -> clean -> train -> TFLite -> parity check -> package (version v0)")
    _add_train_options(p)

    p = sub.add_parser("evaluate", help="score a package with LiteRT on a CSV, next to the naive forecast")
    p.add_argument("package", nargs="+", help="package directory (several: compared in one --report)")
    p.add_argument("--data", required=True, help="CSV to evaluate on")
    p.add_argument(
        "--report",
        help="write a Markdown report (every package and baseline, backtest mean/spread)"
        " here, and a PNG of forecasts against actuals beside it",
    )
    p.add_argument("--folds", type=int, default=5, help="rolling-origin backtest folds of --report (default 5)")
    p.add_argument("--column", action="append", metavar="STANDARD=CSV_NAME", help="map a column name")
    p.add_argument("--series", default="", help="series id (default: the one the package was trained on)")
    p.add_argument(
        "--split",
        choices=["all", "test"],
        default="all",
        help="all windows of the CSV, or the training's test split (same fractions)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("publish", help="store a package in a registry under the next version")
    p.add_argument("package", help="package directory written by `train`")
    p.add_argument("--registry", required=True, help="registry root directory")
    p.add_argument(
        "--promote",
        action="store_true",
        help="also make it the current version, if it passes the quality gate (the CronJob's: beat every"
        " baseline and the serving version on the backtest of its training data); refused: nothing"
        f" is published, exit {EXIT_REFUSED}",
    )
    p.add_argument("--data", default="", help="with --promote: CSV to judge on (default: the package's training data)")
    p.add_argument(
        "--gate-margin",
        type=float,
        default=None,
        help="with --promote: required improvement over every baseline and the serving version (default: as trained)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --promote: promote even if the gate refuses; logged and recorded in metadata.gate",
    )

    p = sub.add_parser("list", help="models, versions and current version in a registry")
    p.add_argument("--registry", required=True)
    p.add_argument("model", nargs="?", help="only this model")

    p = sub.add_parser("show", help="metadata.json of a published version")
    p.add_argument("--registry", required=True)
    p.add_argument("model")
    p.add_argument("version", nargs="?", help="default: current")

    p = sub.add_parser(
        "promote",
        help="make a version current if it passes the quality gate (remembered for rollback)",
        description="The version must pass the quality gate of `publish --promote` (beat every baseline and the"
        " serving version on the backtest of its training data). With --require-shadow-better it must also have"
        " run in shadow on live traffic (tenants.<t>.shadow) and beaten the serving version's live MAE on the"
        f" servers' /metrics. Refused: nothing changes and the exit code is {EXIT_REFUSED}.",
    )
    p.add_argument("--registry", required=True)
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--data", default="", help="CSV to judge on (default: the version's training data)")
    p.add_argument(
        "--gate-margin",
        type=float,
        default=None,
        help="required improvement over every baseline and the serving version (default: as trained)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="promote even if the gate refuses: logged, and published again as the next version with the"
        " forced decision in metadata.gate (a published version never changes)",
    )
    p.add_argument(
        "--require-shadow-better",
        action="store_true",
        help="promote only if the version's live MAE in shadow beats the serving version's",
    )
    p.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        metavar="URL",
        help="a server's /metrics (repeat for every replica), e.g. http://server:8080/metrics",
    )
    p.add_argument("--min-scored", type=int, default=200, help="scored forecasts each side needs (200)")
    p.add_argument("--margin", type=float, default=0.0, help="shadow MAE must be < serving MAE x (1 - margin) (0)")
    p.add_argument(
        "--tenant",
        dest="tenants",
        action="append",
        default=None,
        help="judge on this tenant's live figures only (repeatable; default every tenant scraped),"
        " so another tenant's traffic cannot decide the promotion",
    )

    p = sub.add_parser("rollback", help="make the previously promoted version current again")
    p.add_argument("--registry", required=True)
    p.add_argument("model")

    retrain_description = (
        "Data (CSV or synthetic, plus live records with --records) -> train -> quality gate against the naive"
        " forecast and the serving version on the same newest holdout -> publish [-> promote]. A candidate"
        " refused by the gate exits 0. Settings: defaults < --config / MLSERVING_TRAIN_CONFIG YAML <"
        " MLSERVING_TRAIN_<FIELD> environment variables < flags. See docs/lifecycle.md."
    )
    for command, text in (("pipeline", "the trainer image's entry point"), ("retrain", "same as pipeline")):
        p = sub.add_parser(
            command, help=f"train -> gate -> publish [-> promote] ({text})", description=retrain_description
        )
        _add_retrain_options(p)

    p = sub.add_parser(
        "records",
        help="drain live-traffic records and drift events from the broker into the live history, without training",
        description="Connects the trainer's persistent session (creating it on the first run: records are kept"
        " from then on), merges queued records into the retained live history and prints what it holds.",
    )
    p.add_argument("--config", help="YAML file of TrainConfig settings (also MLSERVING_TRAIN_CONFIG)")
    p.add_argument("--name", help="registry model name whose session and history to use")
    p.add_argument("--series", help="only this series, 'station_id/parameter_id'")
    _add_tenant_option(p)

    p = sub.add_parser("demo-packages", help="fast deterministic v1 packages of lstm and ann into a registry")
    p.add_argument("--registry", required=True, help="registry root directory")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the demo setting)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--models", default="lstm,ann", help="comma-separated model kinds")
    p.add_argument(
        "--gate-margin",
        type=float,
        default=0.0,
        help="required improvement over naive (the demo packages' gate; default 0)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help=f"promote a package the gate refuses (recorded in metadata.gate); else exit {EXIT_REFUSED}",
    )
    return parser


def _cmd_generate(args: argparse.Namespace) -> int:
    from mlserving_training.generate import CLEAN, DirtRates, generate_bts, write_csv

    frame = generate_bts(
        args.stations,
        args.days,
        args.seed,
        rates=CLEAN if args.clean else DirtRates(),
        shift=args.shift,
        shift_days=args.shift_days,
    )
    path = write_csv(frame, args.out)
    shifted = f", level shift {args.shift:+g} over the last {args.shift_days} days" if args.shift else ""
    _emit(f"wrote {len(frame)} rows ({args.stations} stations, {args.days} days{shifted}) to {path}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from mlserving_training.config import load_config
    from mlserving_training.pipeline import train

    train(load_config(args.config, _train_overrides(args)), _emit)
    return EXIT_OK


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from mlserving_training.config import load_config
    from mlserving_training.retrain import run_retrain

    config = load_config(args.config, _train_overrides(args))
    data = config.data or ("none (live records only)" if config.records else "synthetic")
    _emit(
        f"{args.command}: {config.model_name} ({config.model}),"
        f" data {data}{' + live records' if config.records else ''},"
        f" registry {config.registry or '-'}, promote {config.promote}, gate margin {config.gate_margin:g}"
        f"{'' if config.gate else ' (gate off)'}, trigger {config.trigger}"
    )
    run_retrain(config, _emit)  # refused by the gate or skipped: still exit 0, the decision is logged
    return EXIT_OK


def _cmd_records(args: argparse.Namespace) -> int:
    from mlserving_training.config import load_config
    from mlserving_training.records import drain

    overrides = {"name": args.name, "series": args.series, "records": True, "tenants": args.tenants}
    config = load_config(args.config, overrides)
    drain(config, _emit)
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mlserving_training.data import load_csv
    from mlserving_training.pipeline import evaluate_package

    raw = load_csv(args.data, _column_pairs(args.column))
    emit = _emit if not args.json else lambda _: None
    results = [evaluate_package(Path(p), raw, args.series, args.split, emit) for p in args.package]
    if args.report:
        from mlserving_training.report import evaluate_report

        if not 1 <= args.folds <= 50:
            raise ConfigError(f"--folds: {args.folds} must be 1..50")
        table = evaluate_report([Path(p) for p in args.package], raw, Path(args.report), args.series, args.folds, emit)
        results = [{**r, "report": table} for r in results]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return EXIT_OK


def _cmd_publish(args: argparse.Namespace) -> int:
    from mlserving_training.pipeline import publish

    if not args.promote:
        if args.force or args.data or args.gate_margin is not None:
            raise ConfigError("--force/--data/--gate-margin: only with --promote (publishing alone serves nothing)")
        publish(Path(args.package), args.registry, False, _emit)
        return EXIT_OK
    from mlserving_training.retrain import publish_promote_gated

    version = publish_promote_gated(Path(args.package), args.registry, args.data, args.gate_margin, args.force, _emit)
    return EXIT_OK if version else EXIT_REFUSED


def _cmd_list(args: argparse.Namespace) -> int:
    from mlserving_common.package import read_metadata
    from mlserving_common.registries import open_registry

    with closing(open_registry(args.registry)) as registry:
        models = [args.model] if args.model else registry.models()
        if not models:
            _emit(f"no models in {args.registry}")
        for model in models:
            current = registry.current(model)
            _emit(f"{model}: current {current or '-'}")
            for version in registry.versions(model):
                meta = read_metadata(registry.fetch(model, version))
                test = meta.metrics.get("test", {})
                mae = f"MAE {test['mae']:.4f} (naive {test['naive_mae']:.4f})" if "mae" in test else ""
                marker = "*" if version == current else " "
                _emit(f" {marker} {version}  {meta.created_at}  {meta.series_id}  {mae}")
        return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from mlserving_common.package import read_metadata
    from mlserving_common.registries import open_registry

    with closing(open_registry(args.registry)) as registry:
        print(read_metadata(registry.fetch(args.model, args.version)).to_json())
        return EXIT_OK


def _cmd_promote(args: argparse.Namespace) -> int:
    from mlserving_common.registries import open_registry

    with closing(open_registry(args.registry)) as registry:
        package = registry.fetch(args.model, args.version)  # fail on an unknown version before asking any server
        previous = registry.current(args.model)
        if previous == args.version:
            _emit(f"{args.model}: {args.version} is already current")
            return EXIT_OK
        if args.require_shadow_better:
            from mlserving_training.liveguard import compare_shadow, scrape

            if not args.metrics_url:
                raise ConfigError(
                    "--metrics-url: required with --require-shadow-better (each server replica's /metrics)"
                )
            verdict = compare_shadow(
                scrape(args.metrics_url), args.model, args.version, args.min_scored, args.margin, tenants=args.tenants
            )
            _log_event(
                "promotion guard", model=args.model, version=args.version, previous=previous, **verdict.to_dict()
            )
            _emit(f"{args.model} {args.version} in shadow: {verdict.reason}")
            if not verdict.passed:
                _emit(f"{args.model}: not promoted; current stays {previous or '-'}")
                return EXIT_REFUSED
    from mlserving_training.retrain import publish_promote_gated

    # The gate opens the registry itself (one broker connection at a time).
    version = publish_promote_gated(
        package, args.registry, args.data, args.gate_margin, args.force, _emit, version=args.version
    )
    if version is None:
        _emit(f"{args.model}: not promoted; current stays {previous or '-'}")
        return EXIT_REFUSED
    _log_event("model_promoted", model=args.model, version=version, previous=previous, registry=args.registry)
    copy = f" (a copy of {args.version} with the forced gate decision on record)" if version != args.version else ""
    _emit(f"{args.model}: current {previous or '-'} -> {version}{copy}")
    return EXIT_OK


def _cmd_rollback(args: argparse.Namespace) -> int:
    from mlserving_common.registries import open_registry

    with closing(open_registry(args.registry)) as registry:
        previous = registry.current(args.model)
        version = registry.rollback(args.model)
        _log_event("model_rolled_back", model=args.model, version=version, previous=previous, registry=args.registry)
        _emit(f"{args.model}: rolled back {previous} -> {version}")
        return EXIT_OK


def _cmd_demo_packages(args: argparse.Namespace) -> int:
    from mlserving_training import quick
    from mlserving_training.gate import GateRefused

    kwargs = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        paths = quick.build_demo_packages(
            Path(args.registry), models, emit=_emit, margin=args.gate_margin, force=args.force, **kwargs
        )
    except GateRefused as exc:
        _emit(str(exc))
        return EXIT_REFUSED
    for model, path in paths.items():
        _emit(f"{model}: {path}")
    return EXIT_OK


COMMANDS = {
    "generate": _cmd_generate,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "publish": _cmd_publish,
    "list": _cmd_list,
    "show": _cmd_show,
    "promote": _cmd_promote,
    "rollback": _cmd_rollback,
    "pipeline": _cmd_pipeline,
    "retrain": _cmd_pipeline,
    "records": _cmd_records,
    "demo-packages": _cmd_demo_packages,
}


def main(argv: Sequence[str] | None = None) -> int:
    from mlserving_common import logs
    from mlserving_common.package import PackageError
    from mlserving_common.registry import RegistryError

    args = build_parser().parse_args(argv)
    logs.configure()  # events as JSON lines on stderr; progress for humans on stdout
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"mlserving-train: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PackageError, RegistryError, ValueError, RuntimeError, OSError) as exc:
        print(f"mlserving-train {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
