"""Helpers of the end-to-end suite: the chart installed on the real single-node cluster.

`ci/cluster/cluster.sh up` starts the cluster and writes the kubeconfig; `ci/test.sh` exports
KUBECONFIG, loads the images and runs `pytest -m e2e`. pytest-helm-charts provides the
cluster connection (`kube_cluster`); helm runs as a real binary. Clients run on the host and
reach the broker through its NodePort on the node's IP (an address of this machine).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_helm_charts.clusters import Cluster

from mlserving_client.client import Client, Prediction
from mlserving_client.stats import summarize_ns
from mlserving_common.devcache import cache_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ml-serving"
E2E_VALUES = Path(__file__).with_name("values-e2e.yaml")
TENANT_VALUES = [ROOT / "values" / "tenant-a.yaml", ROOT / "values" / "tenant-b.yaml"]
RELEASE = "ml-serving"
PV_ROOT = Path("/var/lib/ml-serving-ci/pv")
SERIES = [310.0, 305.0, 298.0, 301.0, 312.0, 320.0]


def helm_binary() -> str:
    found = shutil.which("helm") or str(cache_dir() / "bin" / "helm")
    if not Path(found).exists():
        pytest.fail("helm not found: run ci/tools.sh")
    return found


def run(cmd: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@dataclass
class Release:
    """The chart installed in its own namespace, plus what a test needs to talk to it."""

    kube: Cluster
    namespace: str
    kubeconfig: str
    host: str = ""
    port: int = 0
    passwords: dict[str, str] = field(default_factory=dict)

    def helm(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([helm_binary(), "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args], timeout, check)

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        return run(["kubectl", "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args], timeout).stdout

    def get(self, kind: str, name: str = "", selector: str = "") -> dict[str, Any]:
        args = ["get", kind] + ([name] if name else []) + (["-l", selector] if selector else []) + ["-o", "json"]
        return json.loads(self.kubectl(*args))

    def deployment(self, tenant: str) -> str:
        return f"{RELEASE}-server-{tenant}"

    def _tenant_pods(self, tenant: str) -> list[dict[str, Any]]:
        selector = (
            f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=server,ml-serving.io/tenant={tenant}"
        )
        return self.get("pods", selector=selector)["items"]

    def server_pods(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's serving pods, leaving out those already terminating."""
        return [p for p in self._tenant_pods(tenant) if not p["metadata"].get("deletionTimestamp")]

    def terminating_pods(self, tenant: str) -> list[dict[str, Any]]:
        return [p for p in self._tenant_pods(tenant) if p["metadata"].get("deletionTimestamp")]

    def install_args(self, *extra: str) -> list[str]:
        files = [f for path in (*TENANT_VALUES, E2E_VALUES) for f in ("-f", str(path))]
        return [RELEASE, str(CHART), *files, *extra]

    def refresh_connection(self) -> None:
        """Node IP, broker NodePort and tenant passwords, read from the cluster."""
        node = self.kube.kubectl("get nodes")
        addresses = (
            node[0]["status"]["addresses"] if isinstance(node, list) else node["items"][0]["status"]["addresses"]
        )
        self.host = next(a["address"] for a in addresses if a["type"] == "InternalIP")
        service = self.get("service", f"{RELEASE}-broker")
        self.port = next(p["nodePort"] for p in service["spec"]["ports"] if p["name"] == "mqtt")
        secret = self.get("secret", f"{RELEASE}-broker-auth")
        self.passwords = {
            key.removeprefix("password-"): base64.b64decode(value).decode()
            for key, value in secret["data"].items()
            if key.startswith("password-")
        }

    def client(self, tenant: str, **kwargs: Any) -> Client:
        options = {"timeout": 3.0, "attempts": 6, "backoff": 0.5, "connect_timeout": 20.0} | kwargs
        return Client(self.host, self.port, tenant, self.passwords[tenant], tenant, **options)

    def wait_rollout(self, tenant: str, timeout: int = 300) -> None:
        self.kubectl(
            "rollout", "status", f"deployment/{self.deployment(tenant)}", f"--timeout={timeout}s", timeout=timeout + 30
        )


@dataclass
class LoadOutcome:
    """What a steady load saw: one record per request, in send order."""

    records: list[tuple[float, Prediction | BaseException]]

    @property
    def sent(self) -> int:
        return len(self.records)

    @property
    def answered(self) -> list[tuple[float, Prediction]]:
        return [(t, r) for t, r in self.records if isinstance(r, Prediction)]

    @property
    def errors(self) -> Counter[str]:
        return Counter(getattr(r, "code", type(r).__name__) for _, r in self.records if not isinstance(r, Prediction))

    @property
    def lost(self) -> int:
        return sum(1 for _, r in self.records if isinstance(r, TimeoutError))

    def p99_ms(self, start: float = 0.0, end: float = float("inf")) -> float:
        latencies = [int(p.latency_s * 1e9) for t, p in self.answered if start <= t < end]
        return summarize_ns(latencies).p99_ms if latencies else float("nan")

    def summary(self) -> str:
        return f"sent={self.sent} answered={len(self.answered)} errors={dict(self.errors)} lost={self.lost}"


class SteadyLoad:
    """Requests at a fixed rate from one client until stopped; every request is waited for.

    The client retries a request with the same id after a timeout, so a request caught in a
    crashed pod or a restarting broker is answered later instead of being lost.
    """

    def __init__(self, client: Client, rate: float, series: list[float] | None = None) -> None:
        self.client = client
        self.rate = rate
        self.series = series or SERIES
        self._futures: list[tuple[float, Future[Prediction]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)

    def start(self) -> SteadyLoad:
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._futures.append((time.monotonic(), self.client.submit(self.series)))
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self, grace: float = 60.0) -> LoadOutcome:
        """Stop sending, then wait up to `grace` seconds for every outstanding answer."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + grace
        records: list[tuple[float, Prediction | BaseException]] = []
        for sent_at, future in self._futures:
            try:
                records.append((sent_at, future.result(timeout=max(0.1, deadline - time.monotonic()))))
            except BaseException as exc:  # noqa: BLE001 - every outcome is recorded, none hidden
                records.append((sent_at, exc))
        return LoadOutcome(records)


def make_static_pvs(release: Release, count: int) -> list[str]:
    """hostPath PVs for the broker's and the registry's claims (the bare cluster has no provisioner)."""
    names = []
    for i in range(count):
        name = f"{release.namespace}-pv{i}"
        path = PV_ROOT / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # hostPath ignores fsGroup; broker (1883) and servers (10001) both write
        manifest = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"ml-serving.io/e2e": release.namespace}},
            "spec": {
                "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            },
        }
        release.kube.kubectl("apply", std_input=json.dumps(manifest), output_format="")
        names.append(name)
    return names
