"""Every chart claim, proven on the real single-node cluster (issue 5's scenarios, in order).

The tests share one release (module-scoped fixture) and run in file order: later scenarios
build on the state of earlier ones (e.g. v2 is published by the retrain job before the
upgrade to v2). Each prints an `E2E` line with its figures for the closing note.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mlserving_common import protocol

from e2e_harness import CHART, RELEASE, SERIES, Release, SteadyLoad
from mqtt_support import RawClient, connect_to

pytestmark = pytest.mark.e2e


def figure(scenario: str, **values: object) -> None:
    print(f"\nE2E {scenario}: " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def wait_until(predicate, timeout: float, interval: float = 2.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def replicas(release: Release, tenant: str) -> int:
    return len(release.server_pods(tenant))


def restart_counts(release: Release, tenant: str) -> dict[str, int]:
    """Each serving pod's restart count by uid: unchanged means a new version was served in place."""
    return {
        p["metadata"]["uid"]: p["status"]["containerStatuses"][0]["restartCount"] for p in release.server_pods(tenant)
    }


def upgrade(release: Release, *settings: str) -> None:
    """`helm upgrade --reuse-values` with `--set` for each setting, then wait for tenant-a's rollout."""
    release.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "--reuse-values",
        *(arg for setting in settings for arg in ("--set", setting)),
        "--wait",
        "--timeout",
        "5m",
    )
    release.wait_rollout("tenant-a")


def connect_owned(release: Release, username: str, name: str, **kwargs: Any) -> RawClient:
    """One CONNECT with `username`'s password and an owned client id `name`."""
    return connect_to(
        release.host,
        release.port,
        username,
        release.passwords[username],
        protocol.owned_client_id(username, name),
        keepalive=60,
        **kwargs,
    )


def retrain(release: Release, model: str, job: str) -> float:
    """Run the model's CronJob now (`kubectl create job --from`) and wait for it; returns seconds."""
    started = time.monotonic()
    release.kubectl("create", "job", job, f"--from=cronjob/{RELEASE}-retrain-{model}")
    try:
        release.kubectl("wait", "--for=condition=complete", f"job/{job}", "--timeout=900s", timeout=930)
    except BaseException:
        print(release.kubectl("logs", f"job/{job}", "--tail=80"))
        raise
    return time.monotonic() - started


def test_install_ready_and_helm_test(release: Release) -> None:
    for tenant in ("tenant-a", "tenant-b"):
        deploy = release.get("deployment", release.deployment(tenant))
        assert deploy["status"].get("readyReplicas", 0) >= 1, deploy["status"]
    broker = release.get("statefulset", f"{RELEASE}-broker")
    assert broker["status"].get("readyReplicas") == 1
    started = time.monotonic()
    result = release.helm("test", RELEASE, "--logs", "--timeout", "5m")
    assert "all 2 tenant(s) answered" in result.stdout, result.stdout
    figure("helm-test", seconds=round(time.monotonic() - started, 1))


def test_round_trip_per_tenant(release: Release) -> None:
    expected = {"tenant-a": "lstm", "tenant-b": "ann"}
    for tenant, model in expected.items():
        with release.client(tenant) as client:
            answer = client.predict(SERIES, timeout=10)
        assert answer.tenant == tenant and answer.model == model and answer.version == "v1"
        assert isinstance(answer.value, float)
        figure(
            "round-trip",
            tenant=tenant,
            model=model,
            prediction=round(answer.value, 2),
            ms=round(answer.latency_s * 1e3, 1),
        )


def test_tenant_cannot_touch_another_tenants_queues(release: Release) -> None:
    """tenant-a's credentials: publishing on tenant-b's queue is refused (PUBACK 0x87), subscribing
    to tenant-b's answers is refused (SUBACK 0x87, by our broker plugin), and none arrive."""
    outcome: dict[str, object] = {}
    client = connect_owned(
        release,
        "tenant-a",
        "e2e-intruder",
        timeout=20,
        on_message=lambda msg: outcome.setdefault("leaked", []).append(msg.topic),  # type: ignore[union-attr]
    )
    try:
        assert not client.refused, f"tenant-a cannot connect: {client.reason_code:#x}"
        suback = client.connection.subscribe(protocol.response_topic("tenant-b") + "/#", qos=1)
        puback = client.connection.publish(
            protocol.request_topic("tenant-b"),
            protocol.encode_request(SERIES, request_id="x"),
            qos=1,
            response_topic=protocol.response_topic("tenant-a") + "/tenant-a:e2e-intruder",
        )
        outcome["suback"], outcome["puback"] = suback.wait(20), puback.wait(20)
        # Tenant-b's own traffic must not reach tenant-a's subscription either.
        with release.client("tenant-b") as victim:
            victim.predict(SERIES, timeout=10)
        time.sleep(1)
    finally:
        client.close()
    assert outcome["puback"] == 0x87, outcome  # Not authorized
    assert outcome["suback"] == [0x87], outcome
    assert "leaked" not in outcome, outcome
    figure("isolation", suback=outcome["suback"], puback=hex(outcome["puback"]))  # type: ignore[arg-type]


def test_bad_values_fail_install_naming_the_field(release: Release) -> None:
    cases = {
        "tenants.tenant-x.replicas": [
            "--set",
            "tenants.tenant-x.model.name=lstm",
            "--set-string",
            "tenants.tenant-x.replicas=three",
        ],
        "bogusKey": ["--set", "tenants.tenant-x.model.name=lstm", "--set", "tenants.tenant-x.bogusKey=1"],
    }
    for field, args in cases.items():
        result = release.helm("install", "bad-values", str(CHART), *args, check=False)
        assert result.returncode != 0, result.stdout
        assert field.split(".")[-1] in result.stderr, result.stderr
        figure("bad-values", field=field, message=result.stderr.strip().splitlines()[-1][:160])
    assert release.helm("status", "bad-values", check=False).returncode != 0


def test_retrain_publishes_v2_without_promoting(release: Release) -> None:
    seconds = {model: round(retrain(release, model, f"retrain-{model}-v2"), 1) for model in ("lstm", "ann")}
    for model in ("lstm", "ann"):  # a refused candidate also completes the job: check what it did
        log = release.kubectl("logs", f"job/retrain-{model}-v2", "--tail=40")
        assert f"retrain {model}: v2 published, not promoted" in log, log[-2000:]
    with release.client("tenant-a") as client:
        assert client.predict(SERIES, timeout=10).version == "v1"  # autoPromote is off: still v1
    figure("retrain-v2", **{f"{m}_seconds": s for m, s in seconds.items()})


def test_upgrade_to_v2_under_load_loses_nothing(release: Release) -> None:
    with release.client("tenant-a") as client:
        load = SteadyLoad(client, rate=40).start()
        time.sleep(10)
        upgrade_started = time.monotonic()
        upgrade(release, "model.version=v2")
        # The old pod still answers while it sleeps in preStop and drains; done means it is gone.
        wait_until(lambda: not release.terminating_pods("tenant-a"), 120, 1, "the old pod to finish draining")
        upgrade_done = time.monotonic()
        time.sleep(10)
        outcome = load.stop()
    before = {p.version for t, p in outcome.answered if t < upgrade_started}
    after = {p.version for t, p in outcome.answered if t >= upgrade_done}
    # During the rollout old and new pods share the subscription, so answers mix until the old
    # pod has drained; before it every answer is v1, after it every answer is v2.
    mixed = sum(1 for t, p in outcome.answered if upgrade_started <= t < upgrade_done)
    figure(
        "upgrade-v2",
        summary=outcome.summary(),
        before=sorted(before),
        after=sorted(after),
        answers_during_rollout=mixed,
        p99_before_ms=round(outcome.p99_ms(end=upgrade_started), 1),
        p99_during_ms=round(outcome.p99_ms(upgrade_started, upgrade_done), 1),
        rollout_seconds=round(upgrade_done - upgrade_started, 1),
    )
    assert outcome.lost == 0 and not outcome.errors, outcome.summary()
    assert before == {"v1"} and after == {"v2"}, (before, after)


def test_autopromoted_retrain_is_served_without_restart(release: Release) -> None:
    upgrade(release, "model.version=current", "retraining.models.lstm.autoPromote=true")
    before = restart_counts(release, "tenant-a")
    seconds = retrain(release, "lstm", "retrain-lstm-v3")
    with release.client("tenant-a") as client:
        served = wait_until(lambda: client.predict(SERIES, timeout=10).version == "v3", 60, 1, "v3 to be served")
    after = restart_counts(release, "tenant-a")
    assert served and before == after, (before, after)
    figure("autopromote", train_seconds=round(seconds, 1), pods_unchanged=before == after)


def test_hpa_scales_out_and_in_under_load(release: Release) -> None:
    tenant = "tenant-a"
    assert replicas(release, tenant) == 1
    with release.client(tenant) as probe_client, release.client(tenant, attempts=8) as heavy_client:
        probe = SteadyLoad(probe_client, rate=10).start()
        heavy = SteadyLoad(heavy_client, rate=400).start()
        started = time.monotonic()
        wait_until(lambda: replicas(release, tenant) > 1, 240, 3, "the HPA to scale out")
        scaled_out = time.monotonic() - started
        heavy_outcome = heavy.stop()
        stopped = time.monotonic()
        wait_until(
            lambda: release.get("deployment", release.deployment(tenant))["spec"]["replicas"] == 1,
            300,
            5,
            "the HPA to scale back in",
        )
        scaled_in = time.monotonic() - stopped
        time.sleep(5)
        outcome = probe.stop()
    figure(
        "hpa",
        scale_out_seconds=round(scaled_out, 1),
        scale_in_seconds=round(scaled_in, 1),
        probe=outcome.summary(),
        heavy=heavy_outcome.summary(),
    )
    assert outcome.lost == 0 and not outcome.errors, outcome.summary()
    assert heavy_outcome.lost == 0, heavy_outcome.summary()


def test_deleted_serving_pod_is_replaced_and_nothing_is_lost(release: Release) -> None:
    tenant = "tenant-b"
    victim = release.server_pods(tenant)[0]["metadata"]["name"]
    with release.client(tenant) as client:
        load = SteadyLoad(client, rate=40).start()
        time.sleep(5)
        release.kubectl("delete", "pod", victim, "--wait=false")
        release.wait_rollout(tenant)
        wait_until(
            lambda: any(
                p["metadata"]["name"] != victim and p["status"].get("phase") == "Running"
                for p in release.server_pods(tenant)
            ),
            180,
            2,
            "a replacement pod",
        )
        time.sleep(10)
        outcome = load.stop()
    figure("pod-delete", summary=outcome.summary(), p99_ms=round(outcome.p99_ms(), 1))
    assert outcome.lost == 0 and not outcome.errors, outcome.summary()


def test_broker_restart_keeps_state_and_servers_reconnect(release: Release) -> None:
    marker = f"kept-{time.time_ns()}"
    topic = f"{protocol.DEFAULT_PREFIX}/_registry/e2e-marker/current"
    publisher = connect_owned(release, "ml-trainer", "e2e-trainer")
    publisher.publish(topic, marker.encode(), qos=1, retain=True, timeout=10)
    publisher.close()
    time.sleep(2)  # let autosave/persistence see it before the restart

    with release.client("tenant-a") as client:
        load = SteadyLoad(client, rate=20).start()
        time.sleep(5)
        restarted = time.monotonic()
        release.kubectl("delete", "pod", f"{RELEASE}-broker-0", "--wait=true", timeout=120)
        release.kubectl("rollout", "status", f"statefulset/{RELEASE}-broker", "--timeout=180s", timeout=200)
        wait_until(lambda: client.predict(SERIES, timeout=5).version is not None, 120, 2, "answers after the restart")
        recovered = time.monotonic() - restarted
        time.sleep(5)
        outcome = load.stop(grace=90)

    reader = connect_owned(release, "ml-trainer", "e2e-reader")
    reader.subscribe(topic, qos=1)
    wait_until(reader.payloads, 20, 0.5, "the retained marker")
    reader.close()
    retained = reader.payloads()
    figure(
        "broker-restart",
        recovered_seconds=round(recovered, 1),
        summary=outcome.summary(),
        retained_kept=retained[0].decode() == marker,
    )
    assert retained[0].decode() == marker
    assert outcome.lost == 0, outcome.summary()
    assert not outcome.errors, outcome.summary()


def test_broker_registry_serves_baked_then_retrained_versions(release: Release) -> None:
    """registry.kind=broker (no shared volume): baked v1 first, then a retrained version from the broker."""
    upgrade(release, "registry.kind=broker", "registry.persistence.enabled=false")
    with release.client("tenant-a") as client:
        # Old pods answer from the PVC (v3) until their preStop pause ends; the new ones have
        # nothing on the broker yet, so the image's baked packages serve.
        wait_until(lambda: client.predict(SERIES, timeout=10).version == "v1", 60, 1, "the baked v1 from the new pods")
    before = restart_counts(release, "tenant-a")
    seconds = retrain(release, "lstm", "retrain-lstm-broker")
    log = release.kubectl("logs", "job/retrain-lstm-broker", "--tail=200")
    with release.client("tenant-a") as client:
        wait_until(lambda: client.predict(SERIES, timeout=10).version == "v2", 60, 1, "v2 from the broker registry")
    after = restart_counts(release, "tenant-a")
    figure(
        "broker-registry",
        train_seconds=round(seconds, 1),
        first="v1 (baked)",
        then="v2 (broker)",
        pods_unchanged=before == after,
    )
    assert "mqtt://ml-trainer@" in log, log[-2000:]
    assert before == after, (before, after)


@pytest.fixture(autouse=True, scope="module")
def _describe_on_failure(release: Release, request: pytest.FixtureRequest):
    """After the module, dump the namespace state when something failed (for CI logs)."""
    yield
    if request.session.testsfailed:
        print(release.kubectl("get", "all,pvc,events", "-o", "wide"))
        for pod in release.get("pods")["items"]:
            print(pod["metadata"]["name"], json.dumps(pod["status"].get("containerStatuses", []))[:1500])
