"""`mlserving-train evaluate --report`: packages and every baseline on one CSV, as Markdown and a PNG.

The figures are the gate's (mlserving_training.gate / baselines): the newest split of the series
(the packages' recorded fractions), one-step forecasts run with LiteRT, the rolling-origin backtest
with the linear ARs (and linear packages) refitted at each fold's origin, the networks as trained.
Any CSV in the documented format works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlserving_common.package import verify_package
from mlserving_training import baselines as baselines_mod
from mlserving_training import data as data_mod
from mlserving_training.features import split_bounds
from mlserving_training.gate import backtest_forecast, build_holdout

Emit = Any


def evaluate_report(
    package_dirs: list[Path],
    raw: data_mod.RawData,
    out_md: Path,
    series: str = "",
    folds: int = baselines_mod.DEFAULT_FOLDS,
    emit: Emit = print,
) -> dict[str, Any]:
    """Write `out_md` and `out_md`.png; returns the table (candidates by name) it wrote."""
    from mlserving_training.pipeline import clean_rows
    from mlserving_training.plot import plot_candidates

    metas = [verify_package(p) for p in package_dirs]
    first = metas[0]
    recorded = first.training.get("config", {})
    series_id, rows = data_mod.select_series(raw, series or first.series_id)
    clean, report = clean_rows(recorded, rows)
    tf, vf = recorded.get("train_fraction", 0.7), recorded.get("val_fraction", 0.15)
    holdout = build_holdout(clean, tf, vf, max(m.window for m in metas))
    _, start = split_bounds(len(clean), tf, vf)
    labels = [f"{m.name} {m.version}" for m in metas]
    if len(set(labels)) < len(labels):  # e.g. two unpublished v0 packages of one name
        labels = [f"{label} ({Path(p).name})" for label, p in zip(labels, package_dirs, strict=True)]
    forecasts = [backtest_forecast(p, holdout, clean, start, folds) for p in package_dirs]
    comparison = baselines_mod.compare(
        clean, holdout.targets, first.window, start, forecasts[0], first.calendar or None, folds
    )
    kept = np.isin(holdout.targets, comparison.targets)
    comparison.forecasts.pop("model")
    for label, forecast in zip(labels, forecasts, strict=True):
        comparison.forecasts[label] = forecast[kept]
    comparison.forecasts = {
        **{lb: comparison.forecasts[lb] for lb in labels},
        **{k: v for k, v in comparison.forecasts.items() if k not in labels},
    }
    table = {name: comparison.metrics(name) for name in comparison.forecasts}
    best_baseline = min((n for n in table if n not in labels), key=lambda n: table[n]["backtest_mae_mean"])
    png = out_md.with_suffix(".png")
    shown = [name for name in [*labels, best_baseline, "naive"] if name in comparison.forecasts]
    lines = {name: comparison.forecasts[name] for name in shown}
    plot_candidates(
        clean.times[comparison.targets],
        comparison.actual,
        lines,
        png,
        f"{series_id}: one-step forecasts on the backtest (last week shown)",
        last=int(7 * 86400 // clean.interval_s) if clean.interval_s else 336,
    )
    out_md.parent.mkdir(parents=True, exist_ok=True)
    text = _markdown(raw, series_id, report.lines()[0], comparison, table, labels, best_baseline, metas, png)
    out_md.write_text(text)
    emit(f"report written: {out_md} (plot {png})")
    return {
        "series_id": series_id,
        "targets": len(comparison.targets),
        "folds": len(comparison.folds),
        "candidates": table,
        "best_baseline": best_baseline,
        "skipped": comparison.skipped,
    }


def _markdown(
    raw: data_mod.RawData,
    series_id: str,
    cleaning: str,
    comparison: baselines_mod.Comparison,
    table: dict[str, Any],
    labels: list[str],
    best: str,
    metas: list,
    png: Path,
) -> str:
    naive = table["naive"]["backtest_mae_mean"]
    out = [
        f"# Forecast report: {series_id}",
        "",
        f"- data: `{raw.source}` (sha256 `{raw.sha256[:12]}`)",
        f"- {cleaning}",
        f"- one-step forecasts on the newest {len(comparison.targets)} targets, rolling-origin backtest of"
        f" {len(comparison.folds)} folds (linear ARs and linear packages refitted at each origin; the networks"
        " as trained, once, on the train split)",
        f"- baselines' linear ARs on the inputs of {labels[0]} (window {metas[0].window}"
        + (", calendar" if metas[0].calendar else "")
        + ")",
        f"- MASE scale: in-sample seasonal naive, period {comparison.scale_period} readings ({comparison.scale:.4g})",
        "",
        "| candidate | MAE | RMSE | MASE | sMAPE % | backtest MAE mean | spread (std) | vs naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in table.items():
        shown = f"**{name}**" if name in labels else name
        out.append(
            f"| {shown} | {m['mae']:.4f} | {m['rmse']:.4f} | {m['mase']:.3f} | {m['smape']:.2f} |"
            f" {m['backtest_mae_mean']:.4f} | {m['backtest_mae_std']:.4f} |"
            f" {m['backtest_mae_mean'] / naive:.3f} |"
        )
    for name, why in comparison.skipped.items():
        out.append(f"| {name} | – | – | – | – | – | – | skipped: {why} |")
    out += ["", "## Verdicts", ""]
    for label, meta in zip(labels, metas, strict=True):
        kind = meta.training.get("config", {}).get("model", "")
        sub = {
            "candidates": {"model": table[label], **{n: table[n] for n in table if n not in labels}},
            "best_baseline": best,
        }
        out.append(f"- **{label}**: {baselines_mod.verdict(sub, 0.0, kind)[1]}")
    out += ["", f"![forecasts against actuals]({png.name})", ""]
    return "\n".join(out)
