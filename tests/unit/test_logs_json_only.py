"""Every line a process writes after `logs.configure` is JSON: also Python's own warnings (numpy's
RuntimeWarnings on overflow) and tracebacks of uncaught exceptions in threads (issue 13, finding 5)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson

PROGRAM = textwrap.dedent(
    """
    import threading, warnings
    import numpy as np
    from mlserving_common import logs

    logs.configure("info")
    np.array([3.5e39], dtype=np.float32)          # RuntimeWarning: overflow encountered in cast
    np.float32(3e38) * np.float32(10)             # RuntimeWarning: overflow encountered in scalar multiply
    warnings.warn("plain warning")
    thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
    thread.start(); thread.join()
    raise ValueError("uncaught in main")
    """
)


def test_warnings_and_uncaught_exceptions_are_json_lines() -> None:
    proc = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise AssertionError(f"non-JSON line on stderr: {line!r}\n{proc.stderr}") from None
    events = " ".join(str(r.get("event")) for r in records)
    assert "overflow encountered in cast" in events and "plain warning" in events
    thread = next(r for r in records if r["event"] == "uncaught exception in thread")
    assert thread["thread"] == "doomed" and "ZeroDivisionError" in thread["exception"]
    main = next(r for r in records if r["event"] == "uncaught exception")
    assert main["level"] == "critical" and "uncaught in main" in main["exception"]


def test_an_invalid_server_config_is_one_json_line_naming_the_field(tmp_path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("tenants: {a: {models: {lstm: current}, legacy: {mean: 1}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mlserving_server", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    record = orjson.loads(line)
    assert record["event"] == "invalid configuration" and record["level"] == "error"
    assert record["error"].startswith("tenants.a.legacy.scale: required")
