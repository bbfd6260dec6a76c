"""Fixtures of the end-to-end suite (helpers live in e2e_harness.py)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest
from pytest_helm_charts.clusters import Cluster

from e2e_harness import PV_ROOT, RELEASE, Release, make_static_pvs, run


@pytest.fixture(scope="module")
def release(kube_cluster: Cluster) -> Iterator[Release]:
    """Install the chart with two tenant files into a fresh namespace; uninstall and clean up after."""
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = os.environ["KUBECONFIG"]
    rel = Release(kube_cluster, namespace, kubeconfig)
    kube_cluster.kubectl(f"create namespace {namespace}", output_format="")
    pvs = make_static_pvs(rel, 2)
    try:
        rel.helm("install", *rel.install_args("--wait", "--timeout", "8m"), timeout=600)
        rel.refresh_connection()
        yield rel
    finally:
        rel.helm("uninstall", RELEASE, "--wait", "--timeout", "3m", check=False)
        run(
            ["kubectl", "--kubeconfig", kubeconfig, "delete", "namespace", namespace, "--wait", "--timeout=180s"],
            check=False,
        )
        for name in pvs:
            run(["kubectl", "--kubeconfig", kubeconfig, "delete", "pv", name, "--wait=false"], check=False)
            shutil.rmtree(PV_ROOT / name, ignore_errors=True)
