"""`helm lint --strict` and offline Kubernetes schema validation of every example combination."""

from __future__ import annotations

import kubernetes_validate
import pytest

from chart_support import CHART, COMBOS, KUBE_VERSION, values_args

#: Kinds served by CRDs (not in the Kubernetes schemas); they are checked by the render tests.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
ALL_APIS = ("monitoring.coreos.com/v1", "keda.sh/v1alpha1")


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_lint_strict(helm, combo):
    result = helm("lint", "--strict", str(CHART), *values_args(COMBOS[combo]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_lint_without_tenants_names_the_missing_value(helm):
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode != 0
    assert "tenants: at least one tenant is required" in result.stdout + result.stderr


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_manifests_valid_against_kubernetes_schema(render, combo):
    rendered = render(COMBOS[combo])
    checked = 0
    for doc in rendered.docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            version = kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc}")
        assert version == "1.34"
        checked += 1
    assert checked == len(rendered.docs)


def test_every_option_valid_against_kubernetes_schema(render):
    """Keda, monitoring, TLS, external options: every non-CRD object is still a valid 1.34 object."""
    rendered = render(
        COMBOS["prod"],
        sets=[
            "keda.enabled=true",
            "keda.prometheus.enabled=true",
            "broker.service.type=NodePort",
            "broker.service.nodePorts.mqtt=31883",
            "retraining.models.lstm.data.source=pvc",
            "retraining.models.lstm.data.claimName=bts-data",
            "retraining.models.lstm.data.path=bts.csv",
            "retraining.timeZone=Europe/Berlin",
            "retraining.ttlSecondsAfterFinished=86400",
        ],
        api_versions=ALL_APIS,
    )
    kinds = {d["kind"] for d in rendered.docs}
    assert kinds >= CRD_KINDS
    for doc in rendered.docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
