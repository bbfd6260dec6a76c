"""Security properties of every rendered example: restricted pods, passwords only in the Secret.

- Every container of every pod the chart can render (Deployments, the broker StatefulSet,
  retraining CronJobs, the helm test Pod; init containers included) runs with the restricted
  Pod Security Standard settings, taking the pod's securityContext and the container's own
  together as Kubernetes does (the container's wins).
- Passwords the chart generates exist only in the broker Secret: no other manifest holds them
  (hashes in checksum annotations are not the password), no template other than the Secret
  renders them, and since templates cannot add to the values a release stores, `helm get values`
  shows a password only if the user supplied it.
"""

from __future__ import annotations

import base64
import re

import pytest
import yaml

from chart_support import CHART, COMBOS, RELEASE, pod_spec

ALL_APIS = ("monitoring.coreos.com/v1", "keda.sh/v1alpha1")
#: Option sets that add or change pods, on top of every example combination.
VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "everything on": (
        "networkPolicy.enabled=true",
        "keda.enabled=true",
        "keda.prometheus.enabled=true",
        "broker.tls.enabled=true",
        "broker.tls.secretName=broker-tls",
        "server.metrics.serviceMonitor.enabled=true",
        "broker.service.type=NodePort",
    ),
    "external broker": (
        "broker.external.enabled=true",
        "broker.external.host=mqtt.example.internal",
        "broker.tls.enabled=false",
    ),
}
PROD_RETRAINING_FROM_PVC = (
    "retraining.models.lstm.data.source=pvc",
    "retraining.models.lstm.data.claimName=bts-data",
    "retraining.models.lstm.data.path=bts.csv",
)
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")


def renders(render):
    for combo, files in sorted(COMBOS.items()):
        for variant, sets in VARIANTS.items():
            if combo == "prod" and variant == "everything on":
                sets = (*sets, *PROD_RETRAINING_FROM_PVC)  # retraining (CronJobs) exists in prod only
            yield f"{combo}/{variant}", render(files, sets=sets, api_versions=ALL_APIS)


def test_every_container_of_every_example_runs_restricted(render):
    checked = 0
    for name, rendered in renders(render):
        pods = [d for d in rendered.docs if d["kind"] in POD_KINDS]
        assert pods, name
        for doc in pods:
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            spec = pod_spec(doc)
            pod_sc = spec.get("securityContext", {})
            assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace")), where
            assert spec.get("automountServiceAccountToken") is False, where
            assert not [v for v in spec.get("volumes", []) if "hostPath" in v], where
            containers = spec["containers"] + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])
            for container in containers:
                sc = {
                    **{k: pod_sc[k] for k in ("runAsNonRoot", "runAsUser", "seccompProfile") if k in pod_sc},
                    **container.get("securityContext", {}),
                }
                what = f"{where} container {container['name']}"
                assert sc.get("runAsNonRoot") is True, what
                assert sc.get("runAsUser", 1) != 0, what
                assert sc.get("privileged", False) is False, what
                assert sc.get("allowPrivilegeEscalation") is False, what
                assert sc.get("readOnlyRootFilesystem") is True, what
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
                assert not sc.get("capabilities", {}).get("add"), what
                assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", what
                assert "procMount" not in sc or sc["procMount"] == "Default", what
                checked += 1
    assert checked >= 40, checked


def _secret(rendered):
    (secret,) = [
        d for d in rendered.docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{RELEASE}-broker-auth"
    ]
    return secret


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_generated_passwords_appear_in_the_secret_only(render, combo):
    rendered = render(COMBOS[combo], sets=VARIANTS["everything on"] if combo == "prod" else (), api_versions=ALL_APIS)
    secret = _secret(rendered)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    generated = {v for k, v in data.items() if k.startswith("password-")}
    assert len(generated) >= 3 and all(len(p) == 32 for p in generated)  # server, trainer, each tenant
    for doc in rendered.docs:
        if doc is secret:
            continue
        text = yaml.safe_dump(doc)
        encoded = {base64.b64encode(p.encode()).decode() for p in generated}
        leaked = [p[:4] + "..." for p in generated | encoded if p in text]
        assert not leaked, f"{doc['kind']} {doc['metadata']['name']} holds {leaked}"
    # Only Secret data, never stringData (which `kubectl apply` would keep in an annotation in clear).
    assert "stringData" not in secret


def test_user_supplied_password_is_used_and_still_only_in_the_secret(render):
    chosen = "user-chosen-password-41f3a9"
    rendered = render(COMBOS["two-tenants"], sets=[f"tenants.tenant-a.password={chosen}"])
    data = {k: base64.b64decode(v).decode() for k, v in _secret(rendered)["data"].items()}
    assert data["password-tenant-a"] == chosen
    for doc in rendered.docs:
        if doc["kind"] != "Secret":
            assert chosen not in yaml.safe_dump(doc), f"{doc['kind']} {doc['metadata']['name']}"


def test_only_the_secret_template_renders_credentials():
    """Static check: the credentials helper feeds the Secret, and elsewhere only sha256 checksums."""
    uses = {}
    for path in sorted((CHART / "templates").rglob("*")):
        if path.is_file() and path.name != "_helpers.tpl":
            for line in path.read_text().splitlines():
                if re.search(r'include "ml-serving\.(credentials|passwdFile)"', line):
                    uses.setdefault(path.relative_to(CHART).as_posix(), []).append(line.strip())
    assert set(uses) <= {
        "templates/broker/secret.yaml",
        "templates/server/deployment.yaml",
        "templates/broker/statefulset.yaml",
    }, uses
    for path, lines in uses.items():
        if path != "templates/broker/secret.yaml":
            assert all("sha256sum" in line for line in lines), (path, lines)
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert not re.search(r'include "ml-serving\.(credentials|passwdFile)"|\.Values\.[\w.]*password', notes)


def test_values_files_in_the_repository_hold_no_password(render):
    from chart_support import VALUES

    def walk(node, name, where=""):
        if isinstance(node, dict):
            for key, value in node.items():
                if "password" in str(key).lower():
                    assert value in ("", None), f"{name}: {where}{key} is set"
                walk(value, name, f"{where}{key}.")
        elif isinstance(node, list):
            for item in node:
                walk(item, name, where)

    for path in sorted(VALUES.glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()), path.name)
