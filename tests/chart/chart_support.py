"""What the chart tests share: paths, the pinned helm, example combinations, parsed renders.

A module with its own name (not conftest) so test modules can import it whatever other
conftest.py files are loaded in the same pytest run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlserving_common.devcache import cache_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ml-serving"
VALUES = ROOT / "values"


def _pinned_tool_versions() -> dict[str, str]:
    """ci/gotools/versions.env is the one place helm's and the CI cluster's versions are pinned."""
    pins = {}
    for line in (ROOT / "ci" / "gotools" / "versions.env").read_text().splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        if sep:
            pins[key.strip()] = value.strip()
    return pins


_PINS = _pinned_tool_versions()
#: MLSERVING_HELM/MLSERVING_HELM_VERSION run the suite with another helm (e.g. helm4 from ci/tools.sh).
HELM = Path(os.environ.get("MLSERVING_HELM", str(cache_dir() / "bin" / "helm")))
HELM_VERSION = os.environ.get("MLSERVING_HELM_VERSION", _PINS["HELM_VERSION"])
KUBE_VERSION = _PINS["K8S_VERSION"].removeprefix("v")  # the version ci/cluster runs
RELEASE = "ml-serving"
NAMESPACE = "ml"

#: Example value combinations users are told to run (README, NOTES, issue 4).
COMBOS: dict[str, tuple[str, ...]] = {
    "two-tenants": ("tenant-a.yaml", "tenant-b.yaml"),
    "dev": ("dev.yaml", "tenant-a.yaml"),
    "dev-two-tenants": ("dev.yaml", "tenant-a.yaml", "tenant-b.yaml"),
    "prod": ("prod.yaml", "tenant-a.yaml", "tenant-b.yaml"),
}


@dataclass
class HelmResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Rendered:
    """Parsed output of `helm template`: every manifest, plus lookups tests need often."""

    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} {name}, found {len(found)}: {[d['metadata']['name'] for d in self.of_kind(kind)]}"
        )
        return found[0]

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for doc in self.docs:
            counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
        return dict(sorted(counts.items()))


def values_args(files: Sequence[str], sets: Sequence[str] = ()) -> list[str]:
    args: list[str] = []
    for name in files:
        path = Path(name)
        args += ["-f", str(path if path.is_absolute() else VALUES / path)]
    for item in sets:
        args += ["--set", item]
    return args


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec inside a Pod, a CronJob or any workload with a pod template."""
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def snake_keys(value: Any) -> Any:
    """A rendered process config (camelCase keys, as values.yaml) with snake_case keys, the names
    the processes' code and these tests use; names that are data (tenants, models) have no capitals."""
    if isinstance(value, dict):
        return {
            re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", k).lower() if isinstance(k, str) else k: snake_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value
