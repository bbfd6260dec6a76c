"""Fixtures for the chart tests: the pinned helm binary and a renderer that parses manifests.

No cluster is needed. helm comes from ci/tools.sh; a missing helm is a failure with the fix in
the message, never a skip, so CI cannot go green without having checked the chart.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence

import pytest
import yaml

from chart_support import CHART, HELM, HELM_VERSION, KUBE_VERSION, NAMESPACE, RELEASE, HelmResult, Rendered, values_args


@pytest.fixture(scope="session")
def helm() -> Callable[..., HelmResult]:
    """Run the pinned helm; fail (not skip) with the remedy when it is not installed."""
    if not HELM.is_file() or not os.access(HELM, os.X_OK):
        pytest.fail(f"helm not found at {HELM}: run ci/tools.sh (it installs helm {HELM_VERSION})", pytrace=False)
    version = subprocess.run([str(HELM), "version", "--template", "{{.Version}}"], capture_output=True, text=True)
    if version.stdout.strip() != HELM_VERSION:
        pytest.fail(
            f"{HELM} is {version.stdout.strip() or version.stderr.strip()}, want {HELM_VERSION}: run ci/tools.sh",
            pytrace=False,
        )

    def run(*args: str) -> HelmResult:
        proc = subprocess.run(
            [str(HELM), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **os.environ,
                "HELM_CACHE_HOME": "/tmp/ml-serving-helm/cache",
                "HELM_CONFIG_HOME": "/tmp/ml-serving-helm/config",
                "HELM_DATA_HOME": "/tmp/ml-serving-helm/data",
            },
        )
        return HelmResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(scope="session")
def template(helm: Callable[..., HelmResult]) -> Callable[..., HelmResult]:
    """`helm template` with the test release/namespace and Kubernetes version; returns the raw result."""

    def run(
        files: Sequence[str] = (), sets: Sequence[str] = (), api_versions: Sequence[str] = (), extra: Sequence[str] = ()
    ) -> HelmResult:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        for api in api_versions:
            args += ["--api-versions", api]
        return helm(*args, *values_args(files, sets), *extra)

    return run


@pytest.fixture(scope="session")
def render(template: Callable[..., HelmResult]) -> Callable[..., Rendered]:
    """Render and parse; a render error fails the test with helm's message."""
    cache: dict[tuple, Rendered] = {}

    def run(
        files: Sequence[str] = (), sets: Sequence[str] = (), api_versions: Sequence[str] = (), extra: Sequence[str] = ()
    ) -> Rendered:
        key = (tuple(files), tuple(sets), tuple(api_versions), tuple(extra))
        if key not in cache:
            result = template(files, sets, api_versions, extra)
            assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
            docs = [d for d in yaml.safe_load_all(result.stdout) if d]
            cache[key] = Rendered(docs)
        return cache[key]

    return run
