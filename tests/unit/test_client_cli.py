"""`mlserving-client` argument handling: every subcommand has --help, bad input is refused early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlserving_client import cli
from mlserving_client.config import ENV_PREFIX, ConfigError, resolve
from mlserving_client.load import MAX_DURATION_S, LoadSpec, TenantTarget, request_templates
from mlserving_client.replay import ReplayError, read_series, windows
from mlserving_common import protocol


@pytest.mark.parametrize("command", [[], ["predict"], ["replay"], ["load"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mlserving-client")
    if command:
        assert "--host" in out and "--password-file" in out and "--tls-ca" in out


def test_module_entry_point_has_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlserving_client", "load", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--concurrency" in result.stdout


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == cli.EXIT_USAGE
    return capsys.readouterr().err


def test_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert "required" in usage_error([], capsys)


def test_load_refuses_long_duration(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["load", "--tenant", "a", "--rate", "10", "--duration", str(MAX_DURATION_S + 1)], capsys)
    assert "at most 3600" in err


def test_load_needs_a_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--rate" in usage_error(["load", "--tenant", "a", "--duration", "1"], capsys)


def test_load_rate_and_concurrency_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert "not allowed" in usage_error(
        ["load", "--tenant", "a", "--rate", "1", "--concurrency", "2", "--count", "1"], capsys
    )


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--rate", "0"),
        ("--rate", "-5"),
        ("--rate", "x"),
        ("--concurrency", "0"),
        ("--batch", "0"),
        ("--count", "-1"),
        ("--grace", "-1"),
    ],
)
def test_load_rejects_bad_numbers(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["load", "--tenant", "a", "--count", "5"]
    argv += [flag, value] if flag in ("--rate", "--concurrency") else ["--rate", "1", flag, value]
    assert flag in usage_error(argv, capsys)


def test_load_needs_duration_or_count(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLSERVING_CLIENT_TENANT", raising=False)
    assert "--duration" in usage_error(["load", "--tenant", "a", "--rate", "1"], capsys)


def test_load_needs_a_tenant(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLSERVING_CLIENT_TENANT", raising=False)
    assert "tenant" in usage_error(["load", "--rate", "1", "--count", "1"], capsys)


def test_load_auth_must_name_a_loaded_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["load", "--tenant", "a", "--auth", "b:pw", "--rate", "1", "--count", "1"], capsys)
    assert "not among" in err


def test_load_spec_maps_tenants_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSERVING_CLIENT_PASSWORD", "from-env")
    args = cli.build_parser().parse_args(
        [
            "load",
            "--port",
            "1999",
            "--tenant",
            "tenant-a",
            "--tenant",
            "tenant-b",
            "--tenant",
            "tenant-c",
            "--auth",
            "tenant-a:secret-a",
            "--auth",
            "tenant-b=robot:secret:b",
            "--concurrency",
            "6",
            "--duration",
            "2",
            "--batch",
            "8",
        ]
    )
    spec = cli.load_spec(args)
    assert spec.port == 1999 and spec.concurrency == 6 and spec.batch == 8 and spec.duration == 2
    assert spec.targets == (
        TenantTarget("tenant-a", "tenant-a", "secret-a"),
        TenantTarget("tenant-b", "robot", "secret:b"),
        TenantTarget("tenant-c", "tenant-c", "from-env"),
    )


def test_load_engine_and_loopback() -> None:
    parse = cli.build_parser().parse_args
    spec = cli.load_spec(parse(["load", "--auth", "x:1", "--rate", "5", "--count", "3"]))
    assert (spec.engine, spec.resolved_engine, spec.loopback) == ("auto", "lean", False)
    spec = cli.load_spec(parse(["load", "--auth", "x:1", "--rate", "5", "--count", "3", "--tls-ca", __file__]))
    assert spec.resolved_engine == "lean"  # TLS no longer needs another engine
    spec = cli.load_spec(
        parse(["load", "--auth", "x:1", "--rate", "5", "--count", "3", "--engine", "reconnect", "--loopback"])
    )
    assert (spec.resolved_engine, spec.loopback) == ("reconnect", True)


def test_qos_2_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """The connection layer speaks QoS 0 and 1 only."""
    err = usage_error(["load", "--auth", "x:1", "--rate", "5", "--count", "3", "--qos", "2"], capsys)
    assert "qos" in err
    with pytest.raises(ValueError, match=r"^qos"):
        LoadSpec(host="h", port=1, targets=(TenantTarget("a"),), rate=1, count=1, qos=2).validate()


def test_load_tenants_default_to_the_auth_list() -> None:
    args = cli.build_parser().parse_args(["load", "--auth", "x:1", "--auth", "y:2", "--rate", "5", "--count", "3"])
    assert [t.tenant for t in cli.load_spec(args).targets] == ["x", "y"]


def test_malformed_auth_is_refused() -> None:
    for bad in ["nopassword", ":pw", "=u:pw", "t=:pw"]:
        with pytest.raises(cli.UsageError):
            cli.parse_auth([bad])


def test_predict_needs_series(capsys: pytest.CaptureFixture[str]) -> None:
    assert "series" in usage_error(["predict", "--tenant", "a"], capsys)


def test_predict_rejects_values_and_json_together(capsys: pytest.CaptureFixture[str]) -> None:
    assert "not both" in usage_error(["predict", "--tenant", "a", "1", "--series-json", "[1]"], capsys)


def test_predict_rejects_bad_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--series-json" in usage_error(["predict", "--tenant", "a", "--series-json", "[1,"], capsys)


def test_predict_rejects_non_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "--tenant", "a", "1", "two"])
    assert exit_info.value.code == 2
    assert "invalid float" in capsys.readouterr().err


def client_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Exactly these MLSERVING_CLIENT_ variables, whatever the shell running the tests has set."""
    for name in [name for name in os.environ if name.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(ENV_PREFIX + name, value)


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    client_env(monkeypatch)
    assert resolve({"password_file": str(secret)}).password == "from-file"
    client_env(monkeypatch, PASSWORD="from-env")
    assert resolve({}).password == "from-env"
    client_env(monkeypatch, PASSWORD="env")
    assert resolve({"password": "flag"}).password == "flag"
    client_env(monkeypatch, PORT="1999")
    assert resolve({"port": 2000}).port == 2000
    client_env(monkeypatch)
    assert resolve({"tenant": "t"}).effective_username == "t"


def test_environment_names_follow_the_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    client_env(
        monkeypatch, HOST="broker", PORT="8883", USERNAME="robot", PASSWORD="s3cret", TENANT="tenant-a", TLS_CA=str(ca)
    )
    config = resolve({"host": None, "port": None})  # None: the flag was not given
    assert (config.host, config.port, config.tenant, config.effective_username) == ("broker", 8883, "tenant-a", "robot")
    assert (config.password, config.tls_ca, config.qos) == ("s3cret", str(ca), 1)
    assert "s3cret" not in repr(config)


def test_config_errors_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client_env(monkeypatch, PORT="eighty")
    with pytest.raises(ConfigError, match=r"^port"):
        resolve({})
    with pytest.raises(ConfigError, match=r"\(from MLSERVING_CLIENT_PORT\)$"):
        resolve({})
    client_env(monkeypatch)
    with pytest.raises(ConfigError, match=r"^port"):
        resolve({"port": 70000})
    with pytest.raises(ConfigError, match=r"^password_file"):
        resolve({"password_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"^tenant"):
        resolve({"tenant": "a/b"})
    with pytest.raises(ConfigError, match=r"^tls_ca"):
        resolve({"tls_ca": str(tmp_path / "missing.pem")})


@pytest.mark.parametrize(
    "flags,field",
    [
        ({"username": "a:b"}, "username"),
        ({"qos": 2}, "qos"),
        ({"host": ""}, "host"),
        ({"prefix": "ml/#"}, "prefix"),
        ({"password": "a", "password_file": "b"}, "password"),
    ],
)
def test_config_refuses(flags: dict[str, object], field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client_env(monkeypatch)
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        resolve(flags)


def test_load_spec_validation_names_fields() -> None:
    target = (TenantTarget("a"),)
    cases = {
        "targets": dict(targets=(), rate=1, count=1),
        "rate/concurrency": dict(targets=target, count=1),
        "duration/count": dict(targets=target, rate=1),
        "duration": dict(targets=target, rate=1, duration=MAX_DURATION_S + 1),
        "batch": dict(targets=target, rate=1, count=1, batch=0),
        "concurrency": dict(targets=(TenantTarget("a"), TenantTarget("b")), concurrency=1, count=1),
        "tenant": dict(targets=(TenantTarget("a/b"),), rate=1, count=1),
        "engine": dict(targets=target, rate=1, count=1, engine="quic"),
    }
    for field, kwargs in cases.items():
        with pytest.raises(ValueError, match=f"^{field}"):
            LoadSpec(host="h", port=1, **kwargs).validate()


def test_request_templates_are_encode_request_with_the_id_spliced_in() -> None:
    windows_ = [(1.0, 2.0, 3.0), (4.0, 5.0, 6.5)]
    for batch, model in ((1, None), (3, "lstm")):
        for k, (head, tail) in enumerate(request_templates(windows_, batch, model)):
            rid = "abc-42"
            if batch == 1:
                expected = protocol.encode_request(list(windows_[k]), request_id=rid, model=model)
            else:
                group = [list(windows_[(k + j) % 2]) for j in range(batch)]
                expected = protocol.encode_request(instances=group, request_id=rid, model=model)
            assert head + rid.encode() + tail == expected
            assert protocol.parse_request(expected, 1 << 16, 16).id == rid


def test_replay_reads_and_selects_a_series(tmp_path: Path) -> None:
    csv_path = tmp_path / "data.csv"
    rows = ["station_id,parameter_id,reading_time,value"]
    rows += [f"s1,temp,{1704067200 + 3600 * h},{h}" for h in range(10)]
    rows += [f"s1,hum,{t},{v}" for t, v in ((300, 53), (100, 51), (200, 99), (200, 52))]  # unsorted, duplicate
    rows += ["s1,hum,400,", "s1,hum,500,ERR", "s1,hum,600,999999", "s1,hum,700,inf"]  # dirt the trainer drops too
    csv_path.write_text("\n".join(rows) + "\n")
    assert read_series(csv_path).label == "s1/hum"  # the first in sorted order, as the trainer picks
    hum = read_series(csv_path, "s1/hum")
    assert hum.values == [51.0, 52.0, 53.0]  # sorted by time, last duplicate wins, dirt skipped
    temp = read_series(csv_path, "s1/temp")
    assert temp.times[0] == "2024-01-01T00:00:00Z" and temp.values == [float(h) for h in range(10)]
    with pytest.raises(ReplayError, match="ambiguous"):
        read_series(csv_path, "s1")
    with pytest.raises(ReplayError, match="not found"):
        read_series(csv_path, "s9")
    assert list(windows([1.0, 2.0, 3.0, 4.0], 2)) == [(2, [1.0, 2.0], 3.0), (3, [2.0, 3.0], 4.0)]


def test_replay_rejects_wrong_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,value\n1,2\n")
    assert "missing column" in usage_error(["replay", str(bad), "--tenant", "a"], capsys)
