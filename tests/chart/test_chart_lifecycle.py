"""Model lifecycle values: server lifecycle settings, shadow and record per tenant, retraining with
records and drift triggers (config parsed by the trainer's own loader, broker credentials
mounted), the guards that stop combinations which would lose records, and the new alerts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chart_support import COMBOS, RELEASE, snake_keys

TWO = COMBOS["two-tenants"]
PROD = COMBOS["prod"]


def values_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "lifecycle-values.yaml"
    path.write_text(body)
    return str(path)


def server_config(rendered, tenant):
    return snake_keys(yaml.safe_load(rendered.one("ConfigMap", f"{RELEASE}-server-{tenant}")["data"]["server.yaml"]))


def trainer_config(rendered, model):
    return snake_keys(yaml.safe_load(rendered.one("ConfigMap", f"{RELEASE}-retrain-{model}")["data"]["trainer.yaml"]))


def cron_pod(rendered, model):
    return rendered.one("CronJob", f"{RELEASE}-retrain-{model}")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_shadow_record_and_lifecycle_settings_reach_the_server(render, tmp_path):
    from mlserving_server.config import parse_config

    extra = values_file(
        tmp_path,
        """
tenants:
  tenant-a:
    models: {ann: ""}
    shadow: {lstm: v3}
    record: true
server:
  config:
    lifecycle:
      drift: {errorFactor: 2.0, psiThreshold: 0.3}
      autoRollback: {enabled: false}
""",
    )
    rendered = render((*TWO, extra))
    raw = server_config(rendered, "tenant-a")
    assert raw["tenants"]["tenant-a"]["shadow"] == {"lstm": "v3"}
    assert raw["tenants"]["tenant-a"]["record"] is True
    assert server_config(rendered, "tenant-b")["tenants"]["tenant-b"]["record"] is False
    config = parse_config(raw, env={"MLSERVING_BROKER_PASSWORD": "x"})
    assert config.tenants["tenant-a"].models == {"lstm": "current", "ann": "current"}
    assert config.shadow_versions() == {("lstm", "v3")}
    assert config.lifecycle.drift.error_factor == 2.0 and config.lifecycle.drift.psi_threshold == 0.3
    assert config.lifecycle.auto_rollback.enabled is False


def test_retraining_with_records_and_drift_trigger_gets_a_broker_session(render, tmp_path):
    from mlserving_training.config import TrainConfig

    extra = values_file(
        tmp_path,
        """
retraining:
  models:
    ann:
      trigger: drift
      records: {enabled: true, tenants: [tenant-b]}
      qualityGate: {margin: 0.05, enabled: true}
""",
    )
    rendered = render((*PROD, extra))
    ann = trainer_config(rendered, "ann")
    config = TrainConfig().merged(ann, source="ann").validate()
    assert (config.trigger, config.records, config.tenants, config.gate_margin) == ("drift", True, ["tenant-b"], 0.05)
    assert config.broker_host == f"{RELEASE}-broker.ml.svc" and config.broker_port == 8883
    assert config.broker_tls_ca_file == "/etc/ml-serving/broker-ca/ca.crt"
    assert config.broker_password_file == "/etc/ml-serving/broker/password"
    assert config.session_client_id == "ml-trainer:trainer-ann"
    pod = cron_pod(rendered, "ann")
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["broker-password"] == "/etc/ml-serving/broker" and "broker-ca" in mounts
    assert mounts["registry"] == "/models"  # the filesystem registry is still where it publishes
    (secret,) = [v for v in pod["volumes"] if v["name"] == "broker-password"]
    assert secret["secret"]["items"] == [{"key": "password-ml-trainer", "path": "password"}]
    # prod's lstm entry records live traffic too, of the tenants served lstm only; a plain entry
    # gets no broker settings.
    assert trainer_config(rendered, "lstm")["records"] is True
    assert trainer_config(rendered, "lstm")["tenants"] == ["tenant-a"]
    plain = trainer_config(render(PROD, sets=["retraining.models.lstm.records.enabled=false"]), "lstm")
    assert plain["records"] is False and "broker_host" not in plain
    assert "broker-password" not in {
        v["name"]
        for v in cron_pod(render(PROD, sets=["retraining.models.lstm.records.enabled=false"]), "lstm")["volumes"]
    }


def test_quality_gate_can_be_switched_off_for_a_bootstrap_run(render, tmp_path):
    extra = values_file(tmp_path, "retraining:\n  models:\n    ann:\n      qualityGate: {enabled: false}\n")
    assert trainer_config(render((*PROD, extra)), "ann")["gate"] is False
    assert "gate" not in trainer_config(render(PROD), "ann")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["broker.persistence.enabled=false"], "enable broker.persistence.enabled"),
        (["broker.config.persistentClientExpiration=1h"], "would drop the trainer's session"),
        (["tenants.tenant-a.shadow.ann=v2"], "tenants.tenant-a.shadow.ann: not one of the tenant's models"),
        (["tenants.tenant-a.shadow.lstm=current"], "is the version the tenant already serves"),
    ],
)
def test_combinations_that_would_lose_records_or_cannot_shadow_fail(template, sets, message):
    result = template(PROD, sets=sets)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_drift_and_rollback_alerts_per_tenant(render):
    (rule,) = render(PROD, api_versions=["monitoring.coreos.com/v1"]).of_kind("PrometheusRule")
    groups = rule["spec"]["groups"]
    assert groups, "the PrometheusRule has no rule groups"
    for group in groups:
        alerts = {r["alert"]: r for r in group["rules"]}
        assert alerts["MlServingModelDrift"]["for"] == "30m"
        assert "mlserving_drift{" in alerts["MlServingModelDrift"]["expr"]
        assert "mlserving_auto_rollbacks_total{" in alerts["MlServingAutoRollback"]["expr"]


def test_dashboard_shows_live_error_drift_and_rollbacks(render):
    import json

    cm = render(PROD).one("ConfigMap", f"{RELEASE}-dashboard")
    dashboard = json.loads(cm["data"]["ml-serving.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "mlserving_live_mae",
        "mlserving_live_scored_total",
        "mlserving_drift",
        "mlserving_input_psi",
        "mlserving_auto_rollbacks_total",
        "mlserving_records_published_total",
    ):
        assert metric in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_a_trainer_uses_only_the_tenants_served_its_model(render, template, tmp_path):
    """Default: the tenants whose models include the trainer's; named tenants must exist; none is
    an error at render time (before: records_tenant unset meant every tenant's records)."""
    extra = values_file(
        tmp_path,
        """
tenants:
  tenant-b:
    models: {lstm: ""}
retraining:
  models:
    ann:
      trigger: drift
""",
    )
    rendered = render((*PROD, extra))
    assert trainer_config(rendered, "lstm")["tenants"] == ["tenant-a", "tenant-b"]
    assert trainer_config(rendered, "ann")["tenants"] == ["tenant-b"]
    assert "tenants" not in trainer_config(render(PROD, sets=["retraining.models.lstm.records.enabled=false"]), "lstm")
    unknown = template(PROD, sets=["retraining.models.lstm.records.tenants={tenant-x}"])
    assert unknown.returncode != 0 and "is not a tenant of this release" in unknown.stderr, unknown.stderr
    nobody = template(
        PROD,
        sets=[
            "retraining.models.gru.kind=lstm",
            "retraining.models.gru.schedule=0 3 * * *",
            "retraining.models.gru.records.enabled=true",
        ],
    )
    assert nobody.returncode != 0 and "no tenant is served model gru" in nobody.stderr, nobody.stderr
