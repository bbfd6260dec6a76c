"""Guarded promotion: promote a version only if its live error in shadow beats the serving version's.

Servers score every forecast against the actual reading that arrives later (live accuracy,
docs/lifecycle.md) and export `mlserving_live_mae{tenant,model,version,role}` with
`mlserving_live_scored_total`. A shadow version runs on the same batches as the serving one, so
both are scored on the same live windows. This module reads those metrics from one or more
servers' /metrics and decides; it needs no Prometheus.

Several replicas: pass each one's URL; figures are combined weighted by scored forecasts (an
approximation: each gauge is the MAE of that replica's last N scored forecasts).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
MAE = "mlserving_live_mae"
SCORED = "mlserving_live_scored_total"


class GuardError(RuntimeError):
    """The guard cannot decide: metrics unreachable or no live figures for the versions."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str, names: Iterable[str] = (MAE, SCORED)) -> list[Sample]:
    """Samples of the given metric names from Prometheus text format (labelled samples only)."""
    wanted = set(names)
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match.group(1) in wanted:
            labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(match.group(2))}
            samples.append(Sample(match.group(1), labels, float(match.group(3))))
    return samples


def scrape(urls: Iterable[str], timeout: float = 10.0) -> list[Sample]:
    samples: list[Sample] = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                samples += parse_metrics(response.read().decode())
        except OSError as exc:
            raise GuardError(f"cannot read {url}: {exc}") from None
    return samples


@dataclass(frozen=True)
class ShadowVerdict:
    passed: bool
    reason: str
    shadow_mae: float | None
    shadow_scored: int
    serving_mae: float | None
    serving_scored: int
    serving_versions: list[str]
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _combined(
    samples: list[Sample], model: str, role: str, version: str | None, tenants: Iterable[str] | None = None
) -> tuple[float | None, int, list[str]]:
    """Scored-weighted MAE over every replica series of (model, role[, version]) of `tenants` (None: all)."""
    wanted = set(tenants) if tenants else None
    scored: dict[tuple[tuple[str, str], ...], float] = {}
    for s in samples:
        if s.name == SCORED:
            scored[tuple(sorted(s.labels.items()))] = s.value
    total, weight, versions = 0.0, 0, set()
    for s in samples:
        labels = s.labels
        if s.name != MAE or labels.get("model") != model or labels.get("role") != role:
            continue
        if wanted is not None and labels.get("tenant") not in wanted:
            continue
        if version is not None and labels.get("version") != version:
            continue
        count = int(scored.get(tuple(sorted(labels.items())), 0))
        if count <= 0 or s.value != s.value:  # no forecast scored yet, or NaN
            continue
        total += s.value * count
        weight += count
        versions.add(labels.get("version", ""))
    return (total / weight if weight else None), weight, sorted(versions)


def compare_shadow(
    samples: list[Sample],
    model: str,
    version: str,
    min_scored: int,
    margin: float,
    tenants: Iterable[str] | None = None,
) -> ShadowVerdict:
    """Pass when `version` (role=shadow) has >= min_scored scored forecasts, so has the serving
    version, and shadow MAE < serving MAE x (1 - margin); with `tenants`, on their figures only."""
    shadow, shadow_n, _ = _combined(samples, model, "shadow", version, tenants)
    serving, serving_n, serving_versions = _combined(samples, model, "serving", None, tenants)
    if shadow is None:
        raise GuardError(
            f"no live figures for {model} {version} in shadow: configure tenants.<t>.shadow.{model}: {version}"
        )
    if serving is None:
        raise GuardError(f"no live figures for the serving version of {model}")
    limit = serving * (1.0 - margin)
    if shadow_n < min_scored or serving_n < min_scored:
        passed, reason = False, f"too few scored forecasts (shadow {shadow_n}, serving {serving_n}; need {min_scored})"
    elif shadow < limit:
        passed, reason = True, f"shadow {version} live MAE {shadow:.4f} < serving {serving:.4f} x {1 - margin:g}"
    else:
        passed, reason = (
            False,
            f"shadow {version} live MAE {shadow:.4f} >= serving {serving:.4f} x {1 - margin:g} = {limit:.4f}",
        )
    return ShadowVerdict(passed, reason, shadow, shadow_n, serving, serving_n, serving_versions, margin)
