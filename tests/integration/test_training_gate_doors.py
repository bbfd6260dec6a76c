"""Honest baselines, the rolling-origin backtest and the gate at `publish --promote`, on real data.

The Taylor series (half-hourly electricity demand, England and Wales, summer 2000; tests/data_support.py)
is a series this project did not generate: on it a small network loses to a linear autoregression
with weekly lags, and the platform must say so instead of serving it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlserving_common.package import verify_package
from mlserving_common.registry import FilesystemRegistry
from mlserving_training.baselines import compare, valid_targets
from mlserving_training.cleaning import clean_series
from mlserving_training.cli import EXIT_REFUSED, main

from data_support import taylor_frame, taylor_values, write_taylor_csv

DAY, WEEK = 48, 336


def reference_figures(values: np.ndarray, start: int) -> dict[str, float]:
    """One-step MAEs on targets [start, n) computed directly (no project code)."""
    t = np.arange(start, len(values))
    lags = [*range(1, 49), WEEK - 1, WEEK]
    rows = np.arange(WEEK, len(values))
    x = np.column_stack([values[rows - lag] for lag in lags] + [np.ones(len(rows))])
    coef, *_ = np.linalg.lstsq(x[rows < start], values[rows][rows < start], rcond=None)
    test = rows >= start
    return {
        "naive": float(np.mean(np.abs(values[t] - values[t - 1]))),
        "seasonal_day": float(np.mean(np.abs(values[t] - values[t - DAY]))),
        "seasonal_week": float(np.mean(np.abs(values[t] - values[t - WEEK]))),
        "linear_ar_week": float(np.mean(np.abs(x[test] @ coef - values[rows][test]))),
    }


def test_taylor_baselines_match_a_direct_computation_and_the_published_figures() -> None:
    values = taylor_values()
    series, report = clean_series(taylor_frame())
    assert report.interval_s == 1800 and len(series) == 4032
    start = round(len(series) * 0.8)
    table = compare(series, valid_targets(series, 48, start), 48, start, folds=1).to_dict()
    expected = reference_figures(values, start)
    for name, mae in expected.items():
        assert table["candidates"][name]["mae"] == pytest.approx(mae, rel=1e-9), name
    # The figures on the last 20 %: naive 644, day 1,930, week 582, OLS AR 186 MW.
    got = {name: table["candidates"][name]["mae"] for name in expected}
    assert abs(got["naive"] - 644) < 2 and abs(got["seasonal_day"] - 1930) < 5
    assert abs(got["seasonal_week"] - 582) < 2 and abs(got["linear_ar_week"] - 186) < 2
    assert table["best_baseline"] == "linear_ar_week" and table["mase_period"] == WEEK


def test_taylor_backtest_has_k_folds_with_mean_and_spread() -> None:
    values = taylor_values()
    series, _ = clean_series(taylor_frame())
    start = round(len(series) * 0.8)
    targets = valid_targets(series, 6, start)
    table = compare(series, targets, 6, start, folds=4).to_dict()
    assert table["folds"] == 4
    naive = table["candidates"]["naive"]
    blocks = np.array_split(targets, 4)
    per_fold = [float(np.mean(np.abs(values[b] - values[b - 1]))) for b in blocks]
    assert naive["backtest_mae"] == pytest.approx(per_fold, rel=1e-9)
    assert naive["backtest_mae_mean"] == pytest.approx(np.mean(per_fold)) and naive["backtest_mae_std"] > 0
    # The linear ARs are refitted at each fold's origin on everything before it: not the one-fit figure.
    one_fit = compare(series, targets, 6, start, folds=1).to_dict()["candidates"]["linear_ar"]["mae"]
    assert table["candidates"]["linear_ar"]["mae"] != pytest.approx(one_fit, rel=1e-6)
    for m in table["candidates"].values():
        assert m["mase"] > 0 and 0 < m["smape"] < 200 and m["rmse"] >= m["mae"]


#: No plots, and the splits every trainer run here uses (the gate's verdicts depend on them).
QUICK_SPLIT = ("--plot", "none", "--train-fraction", "0.65", "--val-fraction", "0.15")


def _train(csv: Path, out: Path, *extra: str) -> Path:
    assert main(["train", "--data", str(csv), "--out", str(out), *QUICK_SPLIT, *extra]) == 0
    return out


def test_publish_promote_refuses_a_model_that_loses_to_a_baseline_and_force_is_on_record(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    csv = write_taylor_csv(tmp_path / "taylor.csv")
    package = _train(csv, tmp_path / "ann", "--model", "ann", "--epochs", "2", "--seed", "1")
    out = capfd.readouterr().out
    assert "verdict: model loses to" in out and "serve the linear_ar_week baseline instead" in out
    verdict = verify_package(package).metrics["verdict"]
    assert verdict["beats_every_baseline"] is False

    registry = tmp_path / "registry"
    assert main(["publish", str(package), "--registry", str(registry), "--promote"]) == EXIT_REFUSED
    captured = capfd.readouterr()
    assert "gate REFUSED" in captured.out and "nothing published" in captured.out
    assert FilesystemRegistry(registry).versions("ann") == []
    refused = [json.loads(line) for line in captured.err.splitlines() if '"publish decision"' in line]
    assert refused and refused[0]["action"] == "refused" and refused[0]["passed"] is False
    assert refused[0]["candidate_mae"] > refused[0]["baselines"]["linear_ar_week"]

    assert main(["publish", str(package), "--registry", str(registry), "--promote", "--force"]) == 0
    captured = capfd.readouterr()
    assert "gate FORCED" in captured.out and '"gate_forced"' in captured.err
    reg = FilesystemRegistry(registry)
    assert reg.current("ann") == "v1"
    gate = verify_package(reg.fetch("ann", "v1")).gate
    assert gate["forced"] is True and gate["passed"] is False and "linear_ar_week" in gate["reason"]


def test_publish_promote_passes_the_linear_ar_that_beats_every_other_baseline_then_guards_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Baselines are packages too: a linear AR over a week of lags beats naive and both seasonal
    naives, so the gate promotes it; a network that loses to it is then refused against it."""
    csv = write_taylor_csv(tmp_path / "taylor.csv")
    linear = _train(csv, tmp_path / "linear", "--model", "linear", "--window", str(WEEK + 1))
    registry = tmp_path / "registry"
    assert main(["publish", str(linear), "--registry", str(registry), "--promote"]) == 0
    captured = capfd.readouterr()
    assert "gate PASS" in captured.out and "no version serving yet" in captured.out
    reg = FilesystemRegistry(registry)
    gate = verify_package(reg.fetch("linear", reg.current("linear"))).gate
    assert gate["passed"] is True and gate["forced"] is False
    assert gate["candidate_mae"] < 0.35 * gate["naive_mae"]
    assert set(gate["baselines"]) >= {"naive", "seasonal_day", "seasonal_week"}
    assert "linear_ar" not in gate["baselines"]  # it is not asked to beat itself

    ann = _train(csv, tmp_path / "ann", "--model", "ann", "--name", "linear", "--epochs", "2")
    assert main(["publish", str(ann), "--registry", str(registry), "--promote"]) == EXIT_REFUSED
    assert reg.current("linear") == "v1" and reg.versions("linear") == ["v1"]


def test_evaluate_report_tables_every_package_and_baseline_with_the_backtest(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    csv = write_taylor_csv(tmp_path / "taylor.csv")
    ann = _train(csv, tmp_path / "ann", "--model", "ann", "--epochs", "2", "--seed", "3")
    linear = _train(csv, tmp_path / "linear", "--model", "linear", "--window", "48")
    report = tmp_path / "report" / "taylor.md"
    capfd.readouterr()
    assert (
        main(["evaluate", str(ann), str(linear), "--data", str(csv), "--report", str(report), "--folds", "4", "--json"])
        == 0
    )
    results = json.loads(capfd.readouterr().out)
    table = results[0]["report"]
    assert table["folds"] == 4 and table["best_baseline"] == "linear_ar_week"
    text = report.read_text()
    for name in (
        "**ann v0**",
        "**linear v0**",
        "naive",
        "seasonal_day",
        "seasonal_week",
        "linear_ar",
        "linear_ar_week",
    ):
        assert f"| {name} |" in text, name
    for name, m in table["candidates"].items():
        assert len(m["backtest_mae"]) == 4
        assert f"| {m['backtest_mae_mean']:.4f} | {m['backtest_mae_std']:.4f} |" in text, name
    # The linear package is the least-squares AR on its 48 inputs: well below naive, and below the
    # linear_ar baseline on the first package's 6 inputs (the report says whose inputs it uses).
    lin, base = table["candidates"]["linear v0"], table["candidates"]["linear_ar"]
    assert lin["mae"] < 0.5 * table["candidates"]["naive"]["mae"] and lin["mae"] < base["mae"]
    assert "linear ARs on the inputs of ann v0 (window 6)" in text
    assert "- **ann v0**: model loses to" in text
    png = report.with_suffix(".png")
    assert png.stat().st_size > 10_000 and png.name in text


def _events(err: str, name: str) -> list[dict]:
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == name]


def test_promote_applies_the_gate_and_force_promotes_a_copy_on_record(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`promote` is a door too: a published version that loses to a baseline is not made current;
    --force makes it current as a copy whose metadata.gate holds the forced decision."""
    csv = write_taylor_csv(tmp_path / "taylor.csv")
    package = _train(csv, tmp_path / "ann", "--model", "ann", "--epochs", "2", "--seed", "1")
    registry = tmp_path / "registry"
    assert main(["publish", str(package), "--registry", str(registry)]) == 0  # stored, serves nothing
    reg = FilesystemRegistry(registry)
    assert reg.versions("ann") == ["v1"] and reg.current("ann") is None
    capfd.readouterr()

    assert main(["promote", "--registry", str(registry), "ann", "v1"]) == EXIT_REFUSED
    captured = capfd.readouterr()
    assert "gate REFUSED" in captured.out and "not promoted" in captured.out
    (refused,) = _events(captured.err, "promote decision")
    assert refused["action"] == "refused" and "linear_ar_week" in refused["reason"]
    assert reg.current("ann") is None and reg.versions("ann") == ["v1"]

    assert main(["promote", "--registry", str(registry), "ann", "v1", "--force"]) == 0
    captured = capfd.readouterr()
    assert "gate FORCED" in captured.out and _events(captured.err, "gate_forced")
    assert reg.current("ann") == "v2" and "a copy of v1" in captured.out
    copy, original = verify_package(reg.fetch("ann", "v2")), verify_package(reg.fetch("ann", "v1"))
    assert copy.model_sha256 == original.model_sha256 and original.gate == {}
    assert copy.gate["forced"] is True and copy.gate["passed"] is False and copy.gate["copy_of"] == "v1"


def test_retrain_applies_the_gate_and_no_gate_is_on_record(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The CronJob's door (and auto-promotion, `--promote`): a losing candidate is not published;
    its override, `--no-gate` (`gate: false`), publishes it with the forced decision on record."""
    csv = write_taylor_csv(tmp_path / "taylor.csv")
    registry = tmp_path / "registry"
    argv = [
        "retrain",
        "--data",
        str(csv),
        "--model",
        "ann",
        "--epochs",
        "2",
        "--seed",
        "1",
        "--registry",
        str(registry),
        "--promote",
        "--out",
        str(tmp_path / "pkg"),
        *QUICK_SPLIT,
    ]
    capfd.readouterr()
    assert main(argv) == 0
    captured = capfd.readouterr()
    (refused,) = _events(captured.err, "retrain decision")
    assert refused["action"] == "refused" and refused["passed"] is False and "linear_ar_week" in refused["reason"]
    assert FilesystemRegistry(registry).versions("ann") == []

    assert main([*argv, "--no-gate"]) == 0
    captured = capfd.readouterr()
    (promoted,) = _events(captured.err, "retrain decision")
    assert promoted["action"] == "promoted" and _events(captured.err, "gate_forced")
    reg = FilesystemRegistry(registry)
    assert reg.current("ann") == "v1"
    gate = verify_package(reg.fetch("ann", "v1")).gate
    assert gate["forced"] is True and gate["passed"] is False and "gate disabled" in gate["reason"]


def test_demo_packages_go_through_the_gate_and_force_is_on_record(tmp_path: Path) -> None:
    """The demo packages' door: required to beat naive by 90 % (no 2-epoch network does), refused and
    nothing published; with force, published and promoted with the forced decision on record."""
    from mlserving_training.gate import GateRefused
    from mlserving_training.quick import build_demo_packages

    with pytest.raises(GateRefused, match="refused by the quality gate"):
        build_demo_packages(tmp_path / "refused", models=("ann",), epochs=2, margin=0.9)
    assert FilesystemRegistry(tmp_path / "refused").versions("ann") == []

    paths = build_demo_packages(tmp_path / "forced", models=("ann",), epochs=2, margin=0.9, force=True)
    assert FilesystemRegistry(tmp_path / "forced").current("ann") == "v1"
    gate = verify_package(paths["ann"]).gate
    assert gate["forced"] is True and gate["passed"] is False and gate["margin"] == 0.9
    assert "does not beat naive" in gate["reason"]


def test_a_linear_package_is_refitted_at_each_origin_like_the_linear_ar(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The backtest judges a linear package as it judges the linear_ar baseline on the same inputs:
    least squares refitted at each fold's origin (the networks are scored as trained)."""
    csv = write_taylor_csv(tmp_path / "taylor.csv")
    linear = _train(csv, tmp_path / "linear", "--model", "linear", "--window", "48")
    trained = verify_package(linear).metrics["baselines"]["candidates"]
    assert trained["model"]["backtest_mae"] == pytest.approx(trained["linear_ar"]["backtest_mae"], rel=1e-9)
    report = tmp_path / "report.md"
    capfd.readouterr()
    assert main(["evaluate", str(linear), "--data", str(csv), "--report", str(report), "--folds", "4", "--json"]) == 0
    table = json.loads(capfd.readouterr().out)["report"]["candidates"]
    assert table["linear v0"]["backtest_mae"] == pytest.approx(table["linear_ar"]["backtest_mae"], rel=1e-9)
    assert len(table["linear v0"]["backtest_mae"]) == 4


def test_the_hybrid_beats_the_linear_ar_on_its_inputs_and_is_promoted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Issue 16's target on a real series: a promoted network with MAE <= 0.25 x naive and below the
    linear AR on the same inputs (336 readings). The hybrid is that AR plus a residual network."""
    csv = write_taylor_csv(tmp_path / "taylor.csv")
    hybrid = _train(
        csv, tmp_path / "hybrid", "--model", "hybrid", "--window", str(WEEK), "--epochs", "100", "--patience", "10"
    )
    metadata = verify_package(hybrid)
    assert metadata.training["model"] == "hybrid" and metadata.parity["passed"]
    assert metadata.metrics["verdict"]["beats_every_baseline"] is True
    registry = tmp_path / "registry"
    capfd.readouterr()
    assert main(["publish", str(hybrid), "--registry", str(registry), "--promote"]) == 0
    assert "gate PASS" in capfd.readouterr().out
    reg = FilesystemRegistry(registry)
    gate = verify_package(reg.fetch("hybrid", reg.current("hybrid"))).gate
    assert gate["passed"] is True and gate["candidate_mae"] <= 0.25 * gate["naive_mae"]
    assert gate["candidate_mae"] < gate["baselines"]["linear_ar"]
