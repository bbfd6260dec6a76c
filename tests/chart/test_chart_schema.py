"""values.schema.json: covers every value, rejects unknown keys and wrong types naming the field;
`fail` guards stop combinations that cannot work."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from chart_support import CHART, COMBOS

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
TWO = COMBOS["two-tenants"]


def resolve(node):
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def walk_schema(node, path, seen):
    """Every object schema either closes its properties or declares what a map holds."""
    node = resolve(node)
    types = node.get("type")
    types = types if isinstance(types, list) else [types]
    if "object" in types:
        ap = node.get("additionalProperties")
        free = path in FREE_OBJECTS
        assert ap is False or isinstance(ap, dict) or free, f"{path}: object without additionalProperties"
        if ap is False:
            assert "properties" in node or "patternProperties" in node, path
        for key, child in node.get("properties", {}).items():
            walk_schema(child, f"{path}.{key}", seen)
        for child in node.get("patternProperties", {}).values():
            walk_schema(child, f"{path}.*", seen)
        if isinstance(ap, dict) and ap:
            walk_schema(ap, f"{path}.*", seen)
    for child in node.get("oneOf", []) + node.get("anyOf", []):
        walk_schema(child, path, seen)
    if "items" in node:
        walk_schema(node["items"], f"{path}[]", seen)


#: Kubernetes objects passed through as given (the API server validates them; the chart tests
#: validate rendered manifests against the Kubernetes schema) and Helm's reserved `global`.
FREE_OBJECTS = {
    "$.global",
    "$.broker.affinity.nodeAffinity",
    "$.broker.affinity.podAffinity",
    "$.broker.affinity.podAntiAffinity",
    "$.server.affinity.nodeAffinity",
    "$.server.affinity.podAffinity",
    "$.server.affinity.podAntiAffinity",
    "$.retraining.affinity.nodeAffinity",
    "$.retraining.affinity.podAffinity",
    "$.retraining.affinity.podAntiAffinity",
    "$.server.extraEnv[]",
    "$.networkPolicy.extraBrokerPeers[]",
}


def test_every_object_in_the_schema_is_closed():
    assert SCHEMA["additionalProperties"] is False
    walk_schema(SCHEMA, "$", set())


def leaf_paths(value, path=()):
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from leaf_paths(child, (*path, key))
    else:
        yield path


def schema_at(path):
    node = SCHEMA
    for key in path:
        node = resolve(node)
        props = node.get("properties", {})
        patterns = [child for pattern, child in node.get("patternProperties", {}).items() if re.search(pattern, key)]
        if key in props:
            node = props[key]
        elif patterns:
            node = patterns[0]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return resolve(node)


def test_schema_covers_every_default_value():
    missing = [".".join(p) for p in leaf_paths(DEFAULTS) if schema_at(p) is None]
    assert not missing, f"values without schema: {missing}"
    undescribed = [
        ".".join(p)
        for p in leaf_paths(DEFAULTS)
        if not schema_at(p).get("type") and not schema_at(p).get("oneOf") and not schema_at(p).get("anyOf")
    ]
    assert not undescribed, f"values without a type: {undescribed}"


@pytest.mark.parametrize("name", ["tenant-a.yaml", "tenant-b.yaml", "dev.yaml", "prod.yaml"])
def test_schema_covers_every_example_value(name):
    from chart_support import VALUES

    values = yaml.safe_load((VALUES / name).read_text())
    missing = [".".join(p) for p in leaf_paths(values) if schema_at(p) is None]
    assert not missing, missing


@pytest.mark.parametrize(
    ("setting", "field", "reason"),
    [
        ("tenants.tenant-a.replicas=three", "/tenants/tenant-a/replicas", "want integer"),
        ("tenants.tenant-a.replicaz=2", "/tenants/tenant-a", "'replicaz' not allowed"),
        ("server.config.batching.maxBatch=0", "/server/config/batching/maxBatch", "minimum"),
        ("broker.unknownOption=1", "/broker", "'unknownOption' not allowed"),
        ("model.version=latest", "/model/version", "does not match"),
        ("tenants.tenant-a.model.version=2", "/tenants/tenant-a/model/version", "want string"),
        ("qos=2", "/qos", "must be one of 0, 1"),
        ("tenants.Tenant_A.model.name=lstm", "/tenants", "'Tenant_A' not allowed"),
        ("retraining.models.lstm.settings.epoch=3", "/retraining/models/lstm/settings", "'epoch' not allowed"),
        ("tenantDefaults.autoscaling.enabled=yes", "/tenantDefaults/autoscaling/enabled", "want boolean"),
        ("registry.kind=s3", "/registry/kind", "must be one of"),
        ("tenants.tenant-a.requestTopic=ml/+/requests", "/tenants/tenant-a/requestTopic", "does not match"),
        ("server.config.logLevel=verbose", "/server/config/logLevel", "must be one of"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(template, setting, field, reason):
    result = template(TWO, sets=[setting])
    assert result.returncode != 0, f"{setting} was accepted"
    message = result.stderr
    assert "values don't meet the specifications of the schema" in message
    assert field in message, message
    assert reason in message, message


def test_schema_rejects_a_bad_values_file(template, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants:\n  tenant-c:\n    model: {name: lstm}\n    autoscaling: {maxReplicas: '5'}\n")
    result = template((*TWO, str(bad)))
    assert result.returncode != 0
    assert "/tenants/tenant-c/autoscaling/maxReplicas" in result.stderr
    assert "want integer" in result.stderr


@pytest.mark.parametrize(
    ("files", "sets", "message"),
    [
        ((), [], "tenants: at least one tenant is required"),
        (TWO, ["keda.enabled=true", "keda.cpu.enabled=false"], "keda: enable at least one trigger"),
        (
            TWO,
            ["retraining.enabled=true", "retraining.models.lstm.schedule=0 3 * * *"],
            "retraining.enabled needs a registry the servers can read",
        ),
        (TWO, ["retraining.enabled=true"], "retraining.models: name at least one model"),
        (TWO, ["tenants.tenant-b.requestTopic=ml/tenant-a/requests"], "tenants.tenant-b.requestTopic"),
        (TWO, ["tenants.tenant-b.responseTopic=ml/tenant-a/responses/b"], "(answers would leak across tenants)"),
        (TWO, ["tenants.tenant-a.autoscaling.minReplicas=7"], "tenants.tenant-a.autoscaling: minReplicas (7) is above"),
        (TWO, ["broker.config.messageSizeLimit=1000"], "broker.config.messageSizeLimit (1000) must be >="),
        (TWO, ["registry.kind=broker"], "enable broker.persistence.enabled"),
        (TWO, ["broker.tls.enabled=true"], "broker.tls.secretName: required"),
        (TWO, ["broker.external.enabled=true"], "broker.external.host: required"),
        (("tenant-a.yaml",), ["tenants.ml-server.model.name=ann"], "tenants.ml-server: the name is taken"),
        (("tenant-a.yaml",), ["tenants.tenant-c.replicas=1"], "tenants.tenant-c.model.name: required"),
        (
            ("tenant-a.yaml",),
            [
                "fullnameOverride=a-very-long-prefix-of-forty-characters-xx",
                "tenants.abcdefghijabcdefghijabcdefghij12.model.name=lstm",
            ],
            "is longer than 63 characters",
        ),
    ],
)
def test_fail_guards_explain_invalid_combinations(template, files, sets, message):
    result = template(files, sets=sets)
    assert result.returncode != 0, f"{sets} rendered"
    assert message in result.stderr, result.stderr
