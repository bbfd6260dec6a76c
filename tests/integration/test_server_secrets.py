"""Passwords never show up in logs, metrics, health answers or command output.

Every broker password of the fixture broker is known to the test; the server (at log level
debug), the client library, and the CLI's predict, load and --check-config run with them, plus
a server and a client with a wrong password (the failure paths log the most). Then every byte
they wrote is searched for every password.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from mlserving_client import Client

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]
WRONG_PASSWORD = "wrong-password-7c1d9e0b2f"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlserving_client", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_no_password_in_logs_metrics_or_output(broker, server_process, registry_root, tmp_path, caplog, until):
    passwords = {user.password for user in broker.users.values()} | {WRONG_PASSWORD}
    server = server_process(registry_root, log_level="debug")
    # A second server with a wrong password: its refusals are logged.
    refused = server_process(
        registry_root, name="refused", wait=False, env={"MLSERVING_BROKER_PASSWORD": WRONG_PASSWORD}
    )
    outputs: dict[str, str] = {}

    caplog.set_level(logging.DEBUG)
    user, password = broker.credentials("tenant-a")
    with Client(broker.host, broker.port, user, password, tenant="tenant-a") as client:
        assert client.predict(SERIES).value is not None
        outputs["client stats"] = repr(client.stats())
    common = ["--host", broker.host, "--port", str(broker.port), "--log-level", "debug"]
    password_file = tmp_path / "tenant-b.password"
    password_file.write_text(broker.users["tenant-b"].password)
    runs = {
        "cli predict": _cli(
            "predict", *common, "--tenant", "tenant-b", "--password-file", str(password_file), *map(str, SERIES)
        ),
        "cli predict (env)": _cli(
            "predict", *common, "--tenant", "tenant-a", *map(str, SERIES), env={"MLSERVING_CLIENT_PASSWORD": password}
        ),
        "cli load": _cli(
            "load",
            *common,
            "--auth",
            f"tenant-a:{password}",
            "--auth",
            f"tenant-b:{broker.users['tenant-b'].password}",
            "--rate",
            "50",
            "--count",
            "50",
            "--json",
        ),
        "cli wrong password": _cli(
            "predict", *common, "--tenant", "tenant-a", "--password", WRONG_PASSWORD, *map(str, SERIES)
        ),
        "server --check-config": subprocess.run(
            [sys.executable, "-m", "mlserving_server", "--config", str(server.config_path), "--check-config"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "MLSERVING_BROKER_PASSWORD": broker.users["server"].password},
        ),
    }
    assert runs["cli predict"].returncode == 0, runs["cli predict"].stderr
    assert runs["cli predict (env)"].returncode == 0, runs["cli predict (env)"].stderr
    assert runs["cli load"].returncode == 0, runs["cli load"].stderr
    assert runs["cli wrong password"].returncode == 3
    assert runs["server --check-config"].returncode == 0
    for name, run in runs.items():
        outputs[f"{name} stdout"], outputs[f"{name} stderr"] = run.stdout, run.stderr

    until(lambda: "broker refused connection" in refused.log(), timeout=30)
    outputs["/metrics"] = server.metrics()
    outputs["/readyz"] = server.get("/readyz")[1]
    outputs["refused /readyz"] = refused.get("/readyz")[1]
    server.stop()
    refused.stop()
    outputs["server log"] = server.log()
    outputs["refused server log"] = refused.log()
    outputs["broker log"] = broker.local.log_path.read_text(errors="replace")
    outputs["client library log"] = "\n".join(r.getMessage() + repr(getattr(r, "fields", "")) for r in caplog.records)

    assert '"level": "debug"' in outputs["server log"] or '"level":"debug"' in outputs["server log"]
    leaks = [(name, p[:6] + "...") for name, text in outputs.items() for p in passwords if p in text]
    assert leaks == [], f"passwords found in: {leaks}"
    sizes = {name: len(text) for name, text in outputs.items()}
    print(
        f"\nsecrets: searched {len(passwords)} passwords in {len(outputs)} outputs,"
        f" {sum(sizes.values())} bytes: none found"
    )
