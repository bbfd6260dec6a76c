"""The chart's config sections come from the processes' own models (ci/schema_gen.py, `make schema`):
the committed files are fresh, values the server would refuse are refused by `helm template` with
the field named, and whatever the chart accepts the process's loader accepts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from chart_support import CHART, COMBOS, RELEASE, ROOT

TWO = COMBOS["two-tenants"]


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("schema_gen", ROOT / "ci" / "schema_gen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def test_committed_schema_and_rules_are_a_fresh_generation() -> None:
    stale = [str(path) for path, text in GEN.generated().items() if path.read_text() != text]
    assert not stale, f"stale, run `make schema`: {stale}"


def test_check_mode_fails_on_a_hand_edit_and_writing_repairs_it(tmp_path, monkeypatch, capsys) -> None:
    schema, rules = tmp_path / "values.schema.json", tmp_path / "_config_rules.tpl"
    edited = json.loads(GEN.SCHEMA.read_text())
    edited["properties"]["server"]["properties"]["config"]["properties"]["batching"]["properties"].pop("maxBatch")
    schema.write_text(json.dumps(edited))
    rules.write_text(GEN.RULES_TEMPLATE.read_text())
    monkeypatch.setattr(GEN, "SCHEMA", schema)
    monkeypatch.setattr(GEN, "RULES_TEMPLATE", rules)
    assert GEN.main(["--check"]) == 1 and "values.schema.json is stale" in capsys.readouterr().err
    assert GEN.main([]) == 0 and GEN.main(["--check"]) == 0
    assert schema.read_text() == (CHART / "values.schema.json").read_text()  # the committed one is fresh


def test_generated_sections_hold_every_config_value_of_values_yaml() -> None:
    """Every key of server.config in values.yaml is a field of the server's model, and back."""
    schema = json.loads(GEN.SCHEMA.read_text())
    section = schema["properties"]["server"]["properties"]["config"]
    defaults = yaml.safe_load((GEN.CHART / "values.yaml").read_text())["server"]["config"]

    def keys(node: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, child in node.items():
            found.add(prefix + key)
            if isinstance(child, dict) and "properties" in child:
                found |= keys(child["properties"], f"{prefix}{key}.")
            elif isinstance(child, dict) and not {"type", "anyOf", "$comment"} & child.keys():
                found |= keys(child, f"{prefix}{key}.")
        return found

    assert keys(section["properties"]) == keys(defaults)


@pytest.mark.parametrize(
    ("setting", "field", "why"),
    [
        # Each passed `helm template` and crash-looped the server before the schema came from its model.
        (
            "server.config.lifecycle.liveAccuracy.maxSeries=20000000",
            "/server/config/lifecycle/liveAccuracy/maxSeries",
            "maximum",
        ),
        (
            "server.config.lifecycle.drift.minScored=1000",
            "server.config.lifecycle.drift.minScored",
            "must be <= server.config.lifecycle.liveAccuracy.window (500)",
        ),
        (
            "server.config.lifecycle.autoRollback.minScored=1000",
            "server.config.lifecycle.autoRollback.minScored",
            "must be <= server.config.lifecycle.liveAccuracy.window (500)",
        ),
        (
            "server.config.lifecycle.liveAccuracy.enabled=false",
            "server.config.lifecycle.autoRollback.enabled",
            "needs server.config.lifecycle.liveAccuracy.enabled",
        ),
        (
            "server.config.limits.maxPendingBytes=1000",
            "server.config.limits.maxPendingBytes",
            "must be >= server.config.limits.maxPayloadBytes (262144)",
        ),
    ],
)
def test_values_the_server_refuses_are_refused_by_helm_naming_the_field(template, setting, field, why):
    result = template(TWO, sets=[setting])
    assert result.returncode != 0, f"{setting} was accepted"
    assert field in result.stderr and why in result.stderr, result.stderr


def test_the_processes_read_the_rendered_camel_case_as_it_is(render):
    """No key conversion between chart and process: the rendered files are the models' own names."""
    from mlserving_server.config import parse_config
    from mlserving_training.config import TrainConfig

    rendered = render(COMBOS["prod"], sets=["server.config.lifecycle.drift.minScored=50", "broker.tls.enabled=false"])
    raw = yaml.safe_load(rendered.one("ConfigMap", f"{RELEASE}-server-tenant-a")["data"]["server.yaml"])
    assert "maxBatch" in raw["batching"] and "minScored" in raw["lifecycle"]["drift"]
    config = parse_config(raw, env={"MLSERVING_BROKER_PASSWORD": "x"})
    assert config.lifecycle.drift.min_scored == 50 and config.broker.password_file == "/etc/ml-serving/broker/password"
    trainer = yaml.safe_load(rendered.one("ConfigMap", f"{RELEASE}-retrain-lstm")["data"]["trainer.yaml"])
    assert "gateMargin" in trainer and "brokerHost" in trainer
    assert TrainConfig().merged(trainer, source="rendered").validate().gate_margin == 0.02


SCHEMA = json.loads(GEN.SCHEMA.read_text())
SERVER_SECTION = SCHEMA["properties"]["server"]["properties"]["config"]
TRAINER_SECTION = SCHEMA["definitions"]["retrainModel"]["properties"]["settings"]
#: Hypothesis is slow to draw these by itself: Helm writes them as 1e-07 and 2.147483647e+09.
EDGES = [{"lifecycle": {"autoRollback": {"margin": 1e-07}}}, {"limits": {"maxPending": 2**31 - 1}}]


def values_of(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """hypothesis-jsonschema for the leaves; objects composed here, as its own object strategy
    does not run with the pinned hypothesis (it reaches into hypothesis internals that changed)."""
    if node.get("type") == "object":
        keys = node.get("properties") or dict.fromkeys(node["propertyNames"]["enum"], node["additionalProperties"])
        return st.fixed_dictionaries({}, optional={k: values_of(v) for k, v in keys.items()})
    return from_schema(node)


def _rendered(template: Any, directory: Path, values: dict[str, Any], name: str) -> tuple[str, str | None]:
    """helm's error, or None and the ConfigMap `name`'s only file (prod, without TLS: the CA file
    is the pod's)."""
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump({**values, "broker": {"tls": {"enabled": False}}}))
    result = template((*COMBOS["prod"], str(path)))
    if result.returncode != 0:
        return result.stderr, None
    (cm,) = [
        d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
    ]
    (text,) = cm["data"].values()
    return "", text


SLOW = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@SLOW
@given(section=values_of(SERVER_SECTION))
@example(section=EDGES[0])
@example(section=EDGES[1])
def test_server_config_accepted_by_helm_is_accepted_by_the_server(template, tmp_path_factory, section):
    """Drawn from the section's schema: refused by helm naming a server.config field, or the server
    starts with the file helm rendered (read from disk, as the pod reads it)."""
    from mlserving_server.config import ConfigError, load_config

    directory = tmp_path_factory.mktemp("server")
    error, text = _rendered(template, directory, {"server": {"config": section}}, f"{RELEASE}-server-tenant-a")
    event("refused by helm" if text is None else "accepted by helm")
    if text is None:
        assert "/server/config" in error or "server.config." in error, error
        return
    (directory / "server.yaml").write_text(text)
    try:
        load_config(directory / "server.yaml", env={"MLSERVING_BROKER_PASSWORD": "x"})
    except ConfigError as refused:
        pytest.fail(f"helm accepted what the server refuses: {refused}\n{text}")


@SLOW
@given(section=values_of(TRAINER_SECTION))
def test_trainer_settings_accepted_by_helm_are_accepted_by_the_trainer(template, tmp_path_factory, section):
    """The same for a retraining entry's settings and the trainer's loader (`pipeline --config`)."""
    from mlserving_training.config import ConfigError, load_config

    directory = tmp_path_factory.mktemp("trainer")
    values = {"retraining": {"models": {"ann": {"settings": section}}}}
    error, text = _rendered(template, directory, values, f"{RELEASE}-retrain-ann")
    event("refused by helm" if text is None else "accepted by helm")
    if text is None:
        assert "/retraining/models/ann/settings" in error or "retraining.models.ann.settings." in error, error
        return
    (directory / "trainer.yaml").write_text(text)
    try:
        load_config(directory / "trainer.yaml", environ={})
    except ConfigError as refused:
        pytest.fail(f"helm accepted what the trainer refuses: {refused}\n{text}")
