"""Guarded promotion can be judged on the tenants it is for: another tenant's shadow figures
(crafted traffic scored on the same model) then neither pass nor block it."""

from __future__ import annotations

from mlserving_training.liveguard import compare_shadow, parse_metrics


def _figures(tenant: str, serving: float, shadow: float, scored: int) -> str:
    return "".join(
        f'mlserving_live_mae{{tenant="{tenant}",model="m",version="{v}",role="{role}"}} {mae}\n'
        f'mlserving_live_scored_total{{tenant="{tenant}",model="m",version="{v}",role="{role}"}} {scored}\n'
        for v, role, mae in (("v1", "serving", serving), ("v2", "shadow", shadow))
    )


def test_shadow_promotion_judged_on_the_named_tenants_only():
    # tenant-b's honest traffic: v2 is better. tenant-a floods crafted windows on which v2 looks bad.
    samples = parse_metrics(_figures("tenant-b", 1.0, 0.5, 300) + _figures("tenant-a", 1.0, 40.0, 3000))
    assert not compare_shadow(samples, "m", "v2", 200, 0.0).passed  # pooled: tenant-a decides
    verdict = compare_shadow(samples, "m", "v2", 200, 0.0, tenants=["tenant-b"])
    assert verdict.passed and verdict.shadow_mae == 0.5 and verdict.shadow_scored == 300
    assert not compare_shadow(samples, "m", "v2", 200, 0.0, tenants=["tenant-a"]).passed
