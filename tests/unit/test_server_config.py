"""Server config: the chart's YAML shape, env overrides, and errors that name the field."""

from __future__ import annotations

import re

import pytest
import yaml

from mlserving_server.config import ConfigError, load_config, parse_config

CHART_SHAPE = """
broker: {host: 127.0.0.1, port: 1883, username: ml-server, password_file: null, keepalive: 30,
         tls: {enabled: false, ca_file: null}}
topic_prefix: ml
share_group: ml-serving
qos: 1
registry: {path: /models, poll_seconds: 2}
batching: {max_batch: 64, max_wait_ms: 2}
limits: {max_payload_bytes: 262144, max_instances: 1024, max_pending: 20000}
http: {host: 0.0.0.0, port: 8080}
drain_seconds: 20
log_level: info
tenants:
  tenant-a:
    models: {lstm: current}
    default_model: lstm
    request_topic: null
    response_topic: null
    rate_limit: {per_second: 0, burst: 0}
  legacy:
    models: {lstm: v2, ann: current}
    default_model: ann
    request_topic: inqueue/lstm
    response_topic: outqueue/lstm
    rate_limit: {per_second: 100, burst: 200}
"""


def base() -> dict:
    return yaml.safe_load(CHART_SHAPE)


def test_chart_shape_loads_with_defaults_filled_in(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(CHART_SHAPE)
    config = load_config(path, env={})
    a = config.tenants["tenant-a"]
    assert (a.request_topic, a.response_topic) == ("ml/tenant-a/requests", "ml/tenant-a/responses")
    legacy = config.tenants["legacy"]
    assert (legacy.request_topic, legacy.response_topic) == ("inqueue/lstm", "outqueue/lstm")
    assert legacy.models == {"lstm": "v2", "ann": "current"}
    assert legacy.rate_limit.per_second == 100 and legacy.rate_limit.burst == 200
    assert config.model_versions() == {("lstm", "current"), ("lstm", "v2"), ("ann", "current")}
    assert config.broker.password is None


def test_default_model_is_implied_when_a_tenant_has_one_model():
    raw = base()
    del raw["tenants"]["tenant-a"]["default_model"]
    assert parse_config(raw).tenants["tenant-a"].default_model == "lstm"


def test_env_overrides_deploy_time_settings(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    raw = base()
    raw["broker"]["password_file"] = str(secret)
    env = {
        "MLSERVING_BROKER_HOST": "mosquitto.ml.svc",
        "MLSERVING_BROKER_PORT": "8883",
        "MLSERVING_BROKER_USERNAME": "server-2",
        "MLSERVING_HTTP_PORT": "9090",
        "MLSERVING_REGISTRY_PATH": "/data/models",
        "MLSERVING_LOG_LEVEL": "debug",
    }
    config = parse_config(raw, env)
    assert (config.broker.host, config.broker.port, config.broker.username) == ("mosquitto.ml.svc", 8883, "server-2")
    assert config.http.port == 9090
    assert config.registry.path == "/data/models"
    assert config.log_level == "debug"
    assert config.broker.password == "from-file"
    assert parse_config(raw, {**env, "MLSERVING_BROKER_PASSWORD": "from-env"}).broker.password == "from-env"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda r: r["tenants"]["tenant-a"]["models"].update(lstm="x"),
            "tenants.tenant-a.models.lstm: version 'x' must be 'current' or vN",
        ),
        (lambda r: r["tenants"]["tenant-a"].update(models={}), "tenants.tenant-a.models:"),
        (lambda r: r["tenants"]["legacy"].update(default_model="gpt"), "tenants.legacy.default_model:"),
        (lambda r: r["tenants"]["legacy"].pop("default_model"), "tenants.legacy.default_model: required"),
        (lambda r: r["tenants"]["tenant-a"].update(request_topic="ml/+/requests"), "tenants.tenant-a.request_topic:"),
        (
            lambda r: r["tenants"]["legacy"].update(request_topic="ml/tenant-a/requests"),
            "tenants.legacy.request_topic:",
        ),
        (lambda r: r["tenants"]["legacy"].update(response_topic="ml/tenant-a/responses/x"), "response_topic:"),
        (
            lambda r: r["tenants"]["tenant-a"].update(rate_limit={"per_second": -1}),
            "tenants.tenant-a.rate_limit.per_second",
        ),
        (lambda r: r["tenants"]["tenant-a"].update(colour="blue"), "tenants.tenant-a.colour: unknown field"),
        (lambda r: r["tenants"].update({"Bad Name": {"models": {"lstm": "current"}}}), "tenants.Bad Name:"),
        (lambda r: r.update(tenants={}), "tenants: at least one tenant"),
        (lambda r: r["broker"].update(port="1883"), "broker.port: '1883' must be an integer"),
        (lambda r: r["broker"].update(port=70000), "broker.port: 70000"),
        (lambda r: r["broker"].update(password="hunter2"), "broker.password: unknown field"),
        (lambda r: r["broker"]["tls"].update(enabled="yes"), "broker.tls.enabled:"),
        (lambda r: r["batching"].update(max_batch=0), "batching.max_batch:"),
        (lambda r: r["limits"].update(max_pending=0), "limits.max_pending:"),
        (lambda r: r.update(qos=2), "qos: 2 must be 0 or 1"),
        (lambda r: r.update(log_level="loud"), "log_level: 'loud'"),
        (lambda r: r.update(topic_prefix="ml/#"), "topic_prefix:"),
        (lambda r: r.update(share_group="a/b"), "share_group:"),
        (lambda r: r.update(extra=1), "extra: unknown field"),
        (lambda r: r["registry"].update(poll_seconds=0), "registry.poll_seconds:"),
        (lambda r: r["registry"].update(kind="s3"), "registry.kind: 's3' is not one of"),
        (lambda r: r["registry"].update(cache_dir=""), "registry.cache_dir:"),
    ],
)
def test_validation_errors_name_the_field(mutate, message):
    raw = base()
    mutate(raw)
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert message in str(error.value)


def test_bad_env_value_names_the_field():
    with pytest.raises(ConfigError, match=r"broker.port: MLSERVING_BROKER_PORT='x'"):
        parse_config(base(), {"MLSERVING_BROKER_PORT": "x"})


def test_unreadable_password_file_names_the_field(tmp_path):
    raw = base()
    raw["broker"]["password_file"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=re.escape("broker.password_file")):
        parse_config(raw)


def test_missing_or_broken_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file"):
        load_config(tmp_path / "nope.yaml", env={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("tenants: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, env={})


def test_check_config_cli_prints_effective_settings_without_secrets(tmp_path, capsys, monkeypatch):
    from mlserving_server.cli import main

    path = tmp_path / "server.yaml"
    path.write_text(CHART_SHAPE)
    monkeypatch.setenv("MLSERVING_BROKER_PASSWORD", "s3cret")
    assert main(["--config", str(path), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and '"password": "set"' in out and "inqueue/lstm" in out
    raw = base()
    raw["qos"] = 5
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path), "--check-config"]) == 2
    assert "qos: 5" in capsys.readouterr().err


def camel(value):
    """CHART_SHAPE as the chart renders it: every key of a setting in camelCase (data keys stay)."""
    from pydantic.alias_generators import to_camel

    if isinstance(value, dict):
        return {(to_camel(k) if "_" in k and k.islower() else k): camel(v) for k, v in value.items()}
    return value


def test_camel_case_keys_read_as_the_snake_case_ones():
    assert camel(base())["tenants"]["legacy"]["defaultModel"] == "ann"
    assert parse_config(camel(base())) == parse_config(base())


def test_env_overrides_land_on_the_spelling_the_file_uses():
    raw = camel(base())
    raw["logLevel"] = "warning"
    config = parse_config(raw, {"MLSERVING_LOG_LEVEL": "debug", "MLSERVING_HTTP_PORT": "9090"})
    assert (config.log_level, config.http.port) == ("debug", 9090)


@pytest.mark.parametrize(
    "lifecycle, message",
    [
        # Values the chart used to accept while the server refused them at start (crash loop).
        ({"liveAccuracy": {"maxSeries": 20000000}}, "lifecycle.live_accuracy.max_series: 20000000 must be <= 10000000"),
        (
            {"drift": {"minScored": 1000}},
            "lifecycle.drift.min_scored: 1000 must be <= lifecycle.live_accuracy.window (500)",
        ),
        (
            {"autoRollback": {"minScored": 1000}},
            "lifecycle.auto_rollback.min_scored: 1000 must be <= lifecycle.live_accuracy.window (500)",
        ),
    ],
)
def test_lifecycle_bounds_name_the_field_and_the_bound(lifecycle, message):
    with pytest.raises(ConfigError) as error:
        parse_config({**base(), "lifecycle": lifecycle})
    assert str(error.value) == message


def test_numbers_helm_writes_in_exponent_form_are_numbers(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(CHART_SHAPE + "lifecycle:\n  autoRollback: {margin: 1e-07}\n")
    assert load_config(path, env={}).lifecycle.auto_rollback.margin == 1e-07


def test_limits_bounds_name_the_field_at_fault():
    raw = base()
    raw["limits"]["max_pending_bytes"] = 1000
    with pytest.raises(ConfigError, match=r"^limits\.max_pending_bytes: 1000 must be >= limits\.max_payload_bytes"):
        parse_config(raw)
