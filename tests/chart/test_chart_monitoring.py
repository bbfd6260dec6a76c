"""Dashboard and alert rules query only metrics the server really exports."""

from __future__ import annotations

import json
import re

import pytest

from chart_support import CHART, COMBOS, RELEASE

METRIC = re.compile(r"\b(mlserving_[a-z_]+)")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name the server's metrics registry can expose (histograms: _bucket/_sum/_count)."""
    from mlserving_server.metrics import Metrics

    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_dashboard_is_valid_json_on_known_metrics(render, exported):
    rendered = render(COMBOS["prod"])
    cm = rendered.one("ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["ml-serving.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "ml-serving.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 8
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used and used <= exported, f"unknown metrics: {sorted(used - exported)}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "latency", "batch", "error", "replicas", "version"):
        assert topic in titles


def test_prometheus_rule_alerts_per_tenant_on_known_metrics(render, exported):
    assert render(COMBOS["prod"]).of_kind("PrometheusRule") == []  # no CRD, no object
    rendered = render(COMBOS["prod"], api_versions=["monitoring.coreos.com/v1"])
    (rule,) = rendered.of_kind("PrometheusRule")
    groups = {g["name"]: g for g in rule["spec"]["groups"]}
    assert set(groups) == {f"ml-serving.{RELEASE}.tenant-a", f"ml-serving.{RELEASE}.tenant-b"}
    for group in groups.values():
        alerts = {r["alert"]: r for r in group["rules"]}
        assert {
            "MlServingNoReadyReplica",
            "MlServingErrorAnswersHigh",
            "MlServingLatencyHigh",
            "MlServingBrokerDisconnected",
        } <= set(alerts)
        for alert in alerts.values():
            used = set(METRIC.findall(alert["expr"]))
            assert used and used <= exported, f"{alert['alert']}: unknown {sorted(used - exported)}"
            assert alert["labels"]["severity"] in {"warning", "critical"}
    assert "> 0.05" in groups[f"ml-serving.{RELEASE}.tenant-a"]["rules"][1]["expr"]
