"""mlserving-train without TensorFlow: help, data generation and registry commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlserving_common.registry import FilesystemRegistry
from mlserving_training.cli import COMMANDS, main

from model_support import make_package


def test_help_works_for_every_subcommand_without_importing_tensorflow() -> None:
    code = (
        "import sys\nfrom mlserving_training.cli import main, COMMANDS\n"
        "for name in [None, *COMMANDS]:\n"
        "    try:\n"
        "        main(['--help'] if name is None else [name, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, name\n"
        "assert 'tensorflow' not in sys.modules\nprint('OK')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")
    assert "pipeline" in result.stdout and "rollback" in result.stdout


def test_generate_writes_a_bts_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bts.csv"
    assert main(["generate", "--stations", "2", "--days", "3", "--seed", "1", "--out", str(out)]) == 0
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["station_id", "parameter_id", "reading_time", "value"]
    assert set(frame["station_id"]) == {"BTS001", "BTS002"}
    assert "wrote" in capsys.readouterr().out


def test_registry_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # `promote` applies the quality gate (its verdicts: tests/integration/test_training_gate_doors.py);
    # these packages are not real models, so here the gate's judgement is a pass.
    from mlserving_training import retrain
    from mlserving_training.gate import decide

    monkeypatch.setattr(retrain, "evaluate_gate", lambda *args: decide(0.5, 1.0, None, 0.0))
    reg = str(tmp_path / "reg")
    pkg = str(make_package(tmp_path / "pkg", name="ann", payload=b"m"))
    assert main(["publish", pkg, "--registry", reg]) == 0
    assert "published ann v1" in capsys.readouterr().out
    assert main(["promote", "--registry", reg, "ann", "v1"]) == 0
    assert main(["publish", pkg, "--registry", reg]) == 0
    assert main(["promote", "--registry", reg, "ann", "v2"]) == 0
    assert "v1 -> v2" in capsys.readouterr().out
    assert main(["list", "--registry", reg]) == 0
    listing = capsys.readouterr().out
    assert "ann: current v2" in listing and " * v2" in listing
    assert main(["show", "--registry", reg, "ann"]) == 0
    assert '"version": "v2"' in capsys.readouterr().out
    assert main(["rollback", "--registry", reg, "ann"]) == 0
    assert FilesystemRegistry(reg).current("ann") == "v1"
    assert main(["rollback", "--registry", reg, "ann"]) == 1
    assert "no previously promoted" in capsys.readouterr().err
    assert main(["promote", "--registry", reg, "ann", "v9"]) == 1


def test_config_errors_exit_with_usage_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "0"]) == 2
    assert "epochs:" in capsys.readouterr().err
    assert set(COMMANDS) >= {"generate", "train", "evaluate", "publish", "list", "promote", "rollback", "pipeline"}
