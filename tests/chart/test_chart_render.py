"""Assertions on rendered manifests: labels, probes, rollouts, autoscaling, isolation, secrets."""

from __future__ import annotations

import base64

import pytest
import yaml

from chart_support import COMBOS, NAMESPACE, RELEASE, pod_spec, snake_keys

PREFIX = f"{RELEASE}"  # release name contains the chart name: objects are <release>-<component>
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)
WORKLOADS = ("Deployment", "StatefulSet")
TWO = COMBOS["two-tenants"]


def config_of(rendered, tenant):
    cm = rendered.one("ConfigMap", f"{PREFIX}-server-{tenant}")
    return snake_keys(yaml.safe_load(cm["data"]["server.yaml"]))


def secret_data(rendered):
    secret = rendered.one("Secret", f"{PREFIX}-broker-auth")
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_standard_labels_on_every_object(render, combo):
    for doc in render(COMBOS[combo]).docs:
        labels = doc["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{doc['kind']} {doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert "app.kubernetes.io/component" in labels or doc["kind"] == "ServiceAccount"
        assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_workload_pod_templates_carry_selector_labels(render, combo):
    for doc in render(COMBOS[combo]).docs:
        if doc["kind"] in WORKLOADS:
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), doc["metadata"]["name"]


def test_exactly_one_deployment_hpa_configmap_service_per_tenant(render):
    rendered = render(TWO)
    for kind in ("Deployment", "HorizontalPodAutoscaler", "Service"):
        names = sorted(
            d["metadata"]["name"]
            for d in rendered.of_kind(kind)
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "server"
        )
        assert names == [f"{PREFIX}-server-tenant-a", f"{PREFIX}-server-tenant-b"], kind
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == hpa["metadata"]["name"]
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert {"scaleUp", "scaleDown"} <= set(hpa["spec"]["behavior"])
    assert config_of(rendered, "tenant-a")["tenants"].keys() == {"tenant-a"}
    assert config_of(rendered, "tenant-b")["tenants"].keys() == {"tenant-b"}


def test_server_config_has_the_agreed_shape(render):
    config = config_of(render(TWO), "tenant-a")
    assert config == {
        "broker": {
            "host": f"{PREFIX}-broker.{NAMESPACE}.svc",
            "port": 1883,
            "username": "ml-server",
            "password_file": "/etc/ml-serving/broker/password",
            "keepalive": 30,
            "tls": {"enabled": False, "ca_file": None},
        },
        "topic_prefix": "ml",
        "share_group": "ml-serving",
        "qos": 1,
        "registry": {"path": "/models", "poll_seconds": 2},
        "batching": {"max_batch": 64, "max_wait_ms": 2},
        "limits": {
            "max_payload_bytes": 262144,
            "max_instances": 1024,
            "max_pending": 5000,
            "max_pending_bytes": 16777216,
            "max_correlation_bytes": 256,
            "receive_maximum": 256,
            "max_outgoing": 10000,
        },
        "http": {"host": "0.0.0.0", "port": 8080},
        "drain_seconds": 20,
        "log_level": "info",
        "lifecycle": {
            "live_accuracy": {"enabled": True, "window": 500, "max_series": 10000},
            "drift": {
                "enabled": True,
                "error_factor": 1.5,
                "min_scored": 100,
                "psi_threshold": 0.25,
                "input_window": 6000,
                "publish_events": True,
            },
            "auto_rollback": {"enabled": True, "margin": 0.2, "min_scored": 100, "window_seconds": 3600},
        },
        "tenants": {
            "tenant-a": {
                "models": {"lstm": "current"},
                "default_model": "lstm",
                "request_topic": None,
                "response_topic": None,
                "rate_limit": {"per_second": 0, "burst": 0},
                "record": False,
            }
        },
    }


def test_server_config_accepted_by_the_server(render, monkeypatch):
    """The server's own validator parses every rendered config (the contract between chart and server)."""
    from mlserving_server.config import parse_config

    for combo in ("two-tenants", "dev-two-tenants", "prod"):
        rendered = render(COMBOS[combo])
        server_maps = [cm for cm in rendered.of_kind("ConfigMap") if "server.yaml" in cm["data"]]
        assert server_maps, f"{combo}: no ConfigMap carries a server.yaml"
        for cm in server_maps:
            raw = snake_keys(yaml.safe_load(cm["data"]["server.yaml"]))
            raw["broker"]["tls"]["ca_file"] = None  # the CA file exists only in the pod
            config = parse_config(raw, env={"MLSERVING_BROKER_PASSWORD": "x"})
            assert len(config.tenants) == 1


def test_trainer_config_accepted_by_the_trainer(render):
    from mlserving_training.config import TrainConfig

    rendered = render(COMBOS["prod"])
    configs = [cm for cm in rendered.of_kind("ConfigMap") if "trainer.yaml" in cm["data"]]
    assert len(configs) == 2
    for cm in configs:
        TrainConfig().merged(yaml.safe_load(cm["data"]["trainer.yaml"]), source=cm["metadata"]["name"]).validate()


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_probes_security_and_resources_on_every_container(render, combo):
    for doc in render(COMBOS[combo]).docs:
        if doc["kind"] not in (*WORKLOADS, "CronJob", "Pod"):
            continue
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"].get("requests"), container["name"]
        if doc["kind"] in WORKLOADS:
            main = spec["containers"][0]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in main, f"{doc['metadata']['name']} lacks {probe}"


def test_server_probes_and_graceful_shutdown(render):
    deployment = render(TWO).one("Deployment", f"{PREFIX}-server-tenant-a")
    spec = deployment["spec"]["template"]["spec"]
    server = spec["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert server["command"] == ["mlserving-server", "--config", "/etc/ml-serving/config/server.yaml"]
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] == 5 + 20 + 10  # preStop + drain_seconds + margin
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"


def test_broker_probes_are_tcp(render):
    broker = render(TWO).one("StatefulSet", f"{PREFIX}-broker")
    mosquitto = broker["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert mosquitto[probe]["tcpSocket"]["port"] == "mqtt"
    init = broker["spec"]["template"]["spec"]["initContainers"][0]
    assert "mosquitto_passwd -U /mosquitto/auth/passwd" in init["command"][-1]


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_rolling_update_never_lowers_capacity(render, combo):
    for deployment in render(COMBOS[combo]).of_kind("Deployment"):
        strategy = deployment["spec"]["strategy"]
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def checksums(rendered, tenant):
    annotations = rendered.one("Deployment", f"{PREFIX}-server-{tenant}")["spec"]["template"]["metadata"]["annotations"]
    return annotations["checksum/config"]


@pytest.mark.parametrize(
    "change", ["model.version=v2", "tenants.tenant-a.model.version=v3", "tenants.tenant-a.rateLimit.perSecond=10"]
)
def test_config_checksum_changes_with_tenant_config(render, change):
    before = render(TWO)
    after = render(TWO, sets=[change])
    assert checksums(before, "tenant-a") != checksums(after, "tenant-a")
    if change.startswith("tenants.tenant-a"):
        # Only the tenant whose config changed rolls.
        assert checksums(before, "tenant-b") == checksums(after, "tenant-b")
    else:
        assert config_of(after, "tenant-b")["tenants"]["tenant-b"]["models"] == {"ann": "v2"}


def test_global_version_applies_unless_the_tenant_pins_one(render):
    rendered = render(
        TWO, sets=["model.version=v2", "tenants.tenant-b.model.version=v1", "tenants.tenant-a.models.ann=v4"]
    )
    assert config_of(rendered, "tenant-a")["tenants"]["tenant-a"]["models"] == {"lstm": "v2", "ann": "v4"}
    assert config_of(rendered, "tenant-a")["tenants"]["tenant-a"]["default_model"] == "lstm"
    assert config_of(rendered, "tenant-b")["tenants"]["tenant-b"]["models"] == {"ann": "v1"}


def test_config_checksum_is_stable_across_renders(render, template):
    # Rendered twice from scratch: generated passwords differ, the config checksum must not.
    first = template(TWO)
    second = template(TWO)
    assert first.returncode == second.returncode == 0

    def pick(out):
        return [line for line in out.splitlines() if "checksum/config" in line]

    assert pick(first.stdout) == pick(second.stdout)


def test_one_acl_block_per_tenant_matching_the_shared_policy(render):
    from mlserving_common import mosquitto

    data = secret_data(render(TWO))
    acl = data["acl"]
    blocks = {}
    for block in acl.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith("#")]
        assert lines[0].startswith("user "), block
        user = lines[0].split(" ", 1)[1]
        assert user not in blocks, f"two ACL blocks for {user}"
        blocks[user] = lines[1:]
    assert set(blocks) == {"ml-server", "ml-trainer", "tenant-a", "tenant-b"}
    for tenant in ("tenant-a", "tenant-b"):
        assert blocks[tenant] == mosquitto.tenant_acl(*mosquitto.tenant_topics(tenant))
    pairs = [mosquitto.tenant_topics(t) for t in ("tenant-a", "tenant-b")]
    assert blocks["ml-server"] == mosquitto.server_acl(pairs)
    assert blocks["ml-trainer"] == mosquitto.trainer_acl()


def test_topic_overrides_reach_acl_config_and_test_pod(render):
    rendered = render(
        TWO, sets=["tenants.tenant-a.requestTopic=inqueue/lstm", "tenants.tenant-a.responseTopic=outqueue/lstm"]
    )
    tenant = config_of(rendered, "tenant-a")["tenants"]["tenant-a"]
    assert (tenant["request_topic"], tenant["response_topic"]) == ("inqueue/lstm", "outqueue/lstm")
    acl = secret_data(rendered)["acl"]
    assert "user tenant-a\ntopic write inqueue/lstm\ntopic read outqueue/lstm\ntopic read outqueue/lstm/#" in acl
    assert "topic read $share/ml-serving/inqueue/lstm" in acl
    script = rendered.one("Pod", f"{PREFIX}-test-predict")["spec"]["containers"][0]["command"][-1]
    assert "--request-topic 'inqueue/lstm'" in script


def test_passwords_file_lists_every_user_once(render):
    data = secret_data(render(TWO, sets=["tenants.tenant-a.password=s3cret-a"]))
    users = dict(line.split(":", 1) for line in data["passwd"].splitlines())
    assert set(users) == {"ml-server", "ml-trainer", "tenant-a", "tenant-b"}
    assert users["tenant-a"] == "s3cret-a" == data["password-tenant-a"]
    for user, password in users.items():
        assert data[f"password-{user}"] == password
        assert len(password) >= 8


def test_server_secret_checksum_matches_the_secret_in_the_same_render(render):
    """Credentials are generated once per render: the Secret and the pod annotations agree."""
    import hashlib

    rendered = render(TWO)
    password = secret_data(rendered)["password-ml-server"]
    expected = hashlib.sha256(f"{PREFIX}-broker-auth:ml-server:{password}".encode()).hexdigest()
    annotations = rendered.one("Deployment", f"{PREFIX}-server-tenant-a")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/secret"] == expected


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_no_secret_material_in_configmaps(render, combo):
    rendered = render(
        COMBOS[combo],
        sets=["tenants.tenant-a.password=tenant-a-secret-value", "broker.users.server.password=server-secret-value"],
    )
    secrets = set(secret_data(rendered).values()) - {""}
    passwords = {v for k, v in secret_data(rendered).items() if k.startswith("password-")}
    for cm in rendered.of_kind("ConfigMap"):
        text = yaml.safe_dump(cm["data"])
        for password in passwords:
            assert password not in text, f"a password leaked into ConfigMap {cm['metadata']['name']}"
        assert "password:" not in text.replace("password_file:", "")
    assert secrets
    # Passwords never appear in pod specs (env or args) either: only Secret volumes carry them.
    for doc in rendered.docs:
        if doc["kind"] in (*WORKLOADS, "CronJob", "Pod"):
            text = yaml.safe_dump(doc)
            for password in passwords:
                assert password not in text


def test_servers_mount_only_their_own_password(render):
    spec = render(TWO).one("Deployment", f"{PREFIX}-server-tenant-a")["spec"]["template"]["spec"]
    secret_volumes = [v["secret"] for v in spec["volumes"] if "secret" in v]
    assert secret_volumes == [
        {
            "secretName": f"{PREFIX}-broker-auth",
            "defaultMode": 0o440,
            "items": [{"key": "password-ml-server", "path": "password"}],
        }
    ]


def test_pdb_only_for_tenants_with_more_than_one_replica(render):
    assert render(TWO).of_kind("PodDisruptionBudget") == []
    assert render(COMBOS["dev"]).of_kind("PodDisruptionBudget") == []
    prod = render(COMBOS["prod"]).of_kind("PodDisruptionBudget")
    assert sorted(p["metadata"]["name"] for p in prod) == [f"{PREFIX}-server-tenant-a", f"{PREFIX}-server-tenant-b"]
    fixed = render(COMBOS["dev"], sets=["tenants.tenant-a.replicas=3"])
    assert [p["spec"]["maxUnavailable"] for p in fixed.of_kind("PodDisruptionBudget")] == [1]
    hpa_min = render(TWO, sets=["tenants.tenant-b.autoscaling.minReplicas=2"])
    assert [p["metadata"]["name"] for p in hpa_min.of_kind("PodDisruptionBudget")] == [f"{PREFIX}-server-tenant-b"]


def test_replicas_left_to_the_autoscaler(render):
    for deployment in render(TWO).of_kind("Deployment"):
        assert "replicas" not in deployment["spec"]
    for deployment in render(COMBOS["dev"]).of_kind("Deployment"):
        assert deployment["spec"]["replicas"] == 1
    assert render(COMBOS["dev"]).of_kind("HorizontalPodAutoscaler") == []


def test_keda_replaces_the_hpa_never_both(render):
    rendered = render(TWO, sets=["keda.enabled=true", "keda.prometheus.enabled=true"])
    assert rendered.of_kind("HorizontalPodAutoscaler") == []
    scaled = rendered.of_kind("ScaledObject")
    assert len(scaled) == 2
    obj = next(s for s in scaled if s["metadata"]["name"] == f"{PREFIX}-server-tenant-a")
    assert obj["spec"]["scaleTargetRef"]["name"] == f"{PREFIX}-server-tenant-a"
    triggers = {t["type"]: t for t in obj["spec"]["triggers"]}
    assert set(triggers) == {"cpu", "prometheus"}
    assert triggers["prometheus"]["metadata"]["query"] == (
        f'sum(mlserving_pending_requests{{namespace="{NAMESPACE}",service="{PREFIX}-server-tenant-a"}})'
    )
    assert "behavior" in obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    for combo in COMBOS.values():
        kinds = render(combo).kinds()
        assert not ("HorizontalPodAutoscaler" in kinds and "ScaledObject" in kinds)


def test_network_policy_admits_only_chart_clients(render):
    assert render(TWO).of_kind("NetworkPolicy") == []
    rendered = render(TWO, sets=["networkPolicy.enabled=true"])
    (policy,) = rendered.of_kind("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {f"{PREFIX}-client": "true"}}}]
    client_label = f"{PREFIX}-client"
    for doc in rendered.docs:
        if doc["kind"] == "Deployment" or doc["kind"] == "Pod":
            labels = (
                doc["metadata"]["labels"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]["labels"]
            )
            assert labels.get(client_label) == "true", doc["metadata"]["name"]


def test_helm_test_pod_asks_every_tenant(render):
    rendered = render(TWO)
    pods = [p for p in rendered.of_kind("Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["restartPolicy"] == "Never"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "localhost/ml-serving-server:0.1.0"
    script = container["command"][-1]
    for tenant in ("tenant-a", "tenant-b"):
        assert f"mlserving-client predict --tenant {tenant}" in script
        assert f"--password-file /etc/ml-serving/tenants/{tenant}" in script
    items = pod["spec"]["volumes"][0]["secret"]["items"]
    assert [i["key"] for i in items] == ["password-tenant-a", "password-tenant-b"]
    assert container["command"][:2] == ["/bin/sh", "-ec"]  # -e: any failed predict fails the test


def test_helm_test_script_runs_the_real_client_cli():
    """The flags the hook passes exist in mlserving-client (parsed by its real parser)."""
    from mlserving_client.cli import build_parser

    args = build_parser().parse_args(
        [
            "predict",
            "--tenant",
            "tenant-a",
            "--password-file",
            "/x",
            "--prefix",
            "ml",
            "--qos",
            "1",
            "--request-topic",
            "a/b",
            "--response-topic",
            "c/d",
            "--timeout",
            "10",
            "--attempts",
            "3",
            "10",
            "11",
            "12",
        ]
    )
    assert args.series == [10.0, 11.0, 12.0]


def test_tls_everywhere_in_prod(render):
    rendered = render(COMBOS["prod"])
    conf = rendered.one("ConfigMap", f"{PREFIX}-broker")["data"]["mosquitto.conf"]
    assert "listener 8883" in conf and "certfile /mosquitto/tls/tls.crt" in conf
    assert "persistence true" in conf
    config = config_of(rendered, "tenant-a")
    assert config["broker"]["port"] == 8883
    assert config["broker"]["tls"] == {"enabled": True, "ca_file": "/etc/ml-serving/broker-ca/ca.crt"}
    broker = rendered.one("StatefulSet", f"{PREFIX}-broker")
    assert broker["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    test_pod = rendered.one("Pod", f"{PREFIX}-test-predict")
    env = {e["name"]: e["value"] for e in test_pod["spec"]["containers"][0]["env"]}
    assert env["MLSERVING_CLIENT_TLS_CA"] == "/etc/ml-serving/broker-ca/ca.crt"


def test_broker_config_sets_limits_explicitly(render):
    """The chart's broker has the same memory bounds as every local broker the tests run, and
    loads our plugin (which owns the ACL) instead of Mosquitto's acl_file."""
    from mlserving_common.mosquitto import DEFAULT_LIMITS, DEFAULT_PLUGIN_OPTIONS

    conf = render(TWO).one("ConfigMap", f"{PREFIX}-broker")["data"]["mosquitto.conf"]
    lines = conf.splitlines()
    for line in (
        "listener 1883",
        "allow_anonymous false",
        "set_tcp_nodelay true",
        "plugin /usr/lib/mosquitto/mlserving_auth.so",
        "plugin_opt_acl_file /mosquitto/auth/acl",
        "plugin_opt_rate_exempt ml-server,ml-trainer",
        "password_file /mosquitto/auth/passwd",
        "persistence false",
        *(f"{key} {value}" for key, value in DEFAULT_LIMITS.items()),
        *(f"plugin_opt_{key} {value}" for key, value in DEFAULT_PLUGIN_OPTIONS.items()),
    ):
        assert line in lines, line
    assert not any(line.startswith("acl_file") for line in lines)


def test_external_broker_renders_no_broker(render):
    rendered = render(
        TWO,
        sets=[
            "broker.external.enabled=true",
            "broker.external.host=mqtt.example.internal",
            "broker.external.port=1884",
        ],
    )
    assert rendered.of_kind("StatefulSet") == []
    assert config_of(rendered, "tenant-a")["broker"]["host"] == "mqtt.example.internal"
    assert config_of(rendered, "tenant-a")["broker"]["port"] == 1884
    assert "acl" in secret_data(rendered)  # to configure the external broker from


def test_registry_pvc_is_seeded_and_shared_with_the_trainer(render):
    rendered = render(COMBOS["prod"])
    (pvc,) = rendered.of_kind("PersistentVolumeClaim")
    spec = rendered.one("Deployment", f"{PREFIX}-server-tenant-a")["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["name"] == "seed-registry"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]
    for cron in rendered.of_kind("CronJob"):
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        job = pod_spec(cron)
        assert job["containers"][0]["command"] == [
            "mlserving-train",
            "pipeline",
            "--config",
            "/etc/ml-serving/trainer/trainer.yaml",
        ]
        assert [v["persistentVolumeClaim"]["claimName"] for v in job["volumes"] if "persistentVolumeClaim" in v] == [
            pvc["metadata"]["name"]
        ]


def test_service_monitor_only_when_the_api_exists(render):
    sets = ["server.metrics.serviceMonitor.enabled=true"]
    assert render(TWO, sets=sets).of_kind("ServiceMonitor") == []
    monitors = render(TWO, sets=sets, api_versions=["monitoring.coreos.com/v1"]).of_kind("ServiceMonitor")
    assert len(monitors) == 2


def test_broker_registry_configs_are_accepted_and_point_at_the_broker(render):
    """registry.kind=broker: servers read with their own login, trainers publish with theirs, both seeded by /models."""
    from mlserving_common.broker_registry import BrokerLocation
    from mlserving_server.config import parse_config
    from mlserving_training.config import TrainConfig

    rendered = render(COMBOS["prod"], ["registry.kind=broker", "registry.persistence.enabled=false"])
    assert not rendered.of_kind("PersistentVolumeClaim")
    servers = trainers = 0
    for cm in rendered.of_kind("ConfigMap"):
        if "server.yaml" in cm["data"]:
            raw = snake_keys(yaml.safe_load(cm["data"]["server.yaml"]))
            raw["broker"]["tls"]["ca_file"] = None  # the CA file exists only in the pod
            config = parse_config(raw, env={"MLSERVING_BROKER_PASSWORD": "x"})
            assert (config.registry.kind, config.registry.path) == ("broker", "/models")
            servers += 1
        if "trainer.yaml" in cm["data"]:
            config = TrainConfig().merged(yaml.safe_load(cm["data"]["trainer.yaml"]), source="t").validate()
            location = BrokerLocation.parse(config.registry)
            assert (location.username, location.tls, location.seed) == ("ml-trainer", True, "/models")
            assert location.password_file == "/etc/ml-serving/broker/password"
            assert location.ca_file and location.ca_file.endswith("/ca.crt")
            trainers += 1
    assert (servers, trainers) == (2, 2)
    for job in rendered.of_kind("CronJob"):
        spec = pod_spec(job)
        mounts = {m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]}
        assert "/etc/ml-serving/broker" in mounts and "/models" not in mounts  # the image's baked /models is the seed
