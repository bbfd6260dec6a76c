"""The retraining quality gate end to end, through `mlserving-train retrain` with real trained models.

A candidate that cannot beat the naive forecast is refused (nothing published, exit 0), a good
one is published and promoted, and a worse one than the version now serving is refused; every
decision is one JSON event with its figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlserving_common.registry import FilesystemRegistry
from mlserving_training.cli import main

pytestmark = pytest.mark.slow

#: The demo's data and optimiser (1 station, 60 days hourly): trains in seconds, beats naive.
DEMO = (
    "model: ann\nsynthetic_stations: 1\nsynthetic_days: 60\nseed: 7\nbatch_size: 32\nlearning_rate: 0.003\n"
    "patience: 3\nplot: none\n"
)


#: A candidate that beats every baseline on that data: the linear kind (one Dense layer, least squares).
GOOD = ("--model", "linear", "--name", "ann", "--window", "24", "--calendar")


def decisions(stderr: str) -> list[dict]:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == "retrain decision"]


def retrain(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[str, dict]:
    config = tmp_path / "trainer.yaml"
    config.write_text(DEMO)
    argv = [
        "retrain",
        "--config",
        str(config),
        "--registry",
        str(registry),
        "--promote",
        "--out",
        str(tmp_path / "pkg"),
        *flags,
    ]
    assert main(argv) == 0  # refused or not, a gate decision is a normal outcome
    captured = capsys.readouterr()
    (decision,) = decisions(captured.err)
    return captured.out, decision


def test_gate_refuses_worse_candidates_and_accepts_a_better_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_root = tmp_path / "registry"
    registry = FilesystemRegistry(registry_root)

    # 1. One epoch at a tiny learning rate: worse than "the next reading equals the last one".
    out, bad = retrain(tmp_path, registry_root, capsys, "--epochs", "1", "--learning-rate", "0.00001")
    print(f"\nuntrained candidate: {bad['reason']}")
    assert bad["action"] == "refused" and bad["passed"] is False
    assert bad["candidate_mae"] >= bad["naive_mae"] and "does not beat naive" in bad["reason"]
    assert bad["serving_version"] is None and bad["windows"] > 100
    assert "gate REFUSED" in out and registry.versions("ann") == []

    # 2. A linear AR over a day of lags and the calendar: beats naive and every other baseline
    # (the demo's 8-epoch network does not beat the linear AR on this data), nothing serves yet
    # -> published and promoted as v1.
    out, good = retrain(tmp_path, registry_root, capsys, *GOOD)
    print(f"good candidate: {good['reason']}")
    assert good["action"] == "promoted" and good["version"] == "v1" and good["passed"] is True
    assert good["candidate_mae"] < good["naive_mae"]
    assert registry.current("ann") == "v1" and "gate PASS" in out

    # 3. Two epochs of the network: compared with v1 on the same newest holdout windows, worse -> refused.
    out, worse = retrain(tmp_path, registry_root, capsys, "--epochs", "2", "--learning-rate", "0.0003")
    print(f"weaker candidate: {worse['reason']}")
    assert worse["action"] == "refused" and worse["serving_version"] == "v1"
    assert worse["serving_mae"] == pytest.approx(good["candidate_mae"], rel=1e-6)  # same holdout, same model
    assert worse["candidate_mae"] > worse["serving_mae"]
    assert registry.versions("ann") == ["v1"] and registry.current("ann") == "v1"

    # 4. The same training again (deterministic: the same model) passes with margin 0 ...
    out, equal = retrain(tmp_path, registry_root, capsys, *GOOD)
    assert equal["candidate_mae"] == pytest.approx(equal["serving_mae"], rel=1e-9)
    assert equal["action"] == "promoted" and equal["version"] == "v2"
    # ... and is refused when it must beat the serving version by 5 %.
    out, margin = retrain(tmp_path, registry_root, capsys, *GOOD, "--gate-margin", "0.05")
    print(f"same model, margin 0.05: {margin['reason']}")
    assert margin["action"] == "refused" and margin["margin"] == 0.05
    assert "not better than serving v2" in margin["reason"]
    assert registry.versions("ann") == ["v1", "v2"]
    for d in (bad, good, worse, equal, margin):
        print(
            f"  {d['action']:>8}: candidate {d['candidate_mae']:.4f} serving {d['serving_mae']}"
            f" naive {d['naive_mae']:.4f}"
        )
