"""A hostile tenant cannot roll a version back for another tenant, nor keep a bad one for it.

tenant-a holds valid credentials of its own and sends normal requests only: windows of readings
in 5,000-6,040 (tenant-b's series are 12-32 kW) under tenant-b's series id. Both tenants are
served `ann` from the same registry pointer, in the two layouts the chart and the demo use:
one server process for both tenants, and one server per tenant. The auto-rollback guard judges
each tenant on its own live scores (docs/lifecycle.md section 6):

- forced: a good v2 (a copy of v1) is promoted; tenant-a's crafted windows make v2 look bad on
  tenant-a's traffic only. tenant-a is pinned back to v1; tenant-b keeps v2 (before: the pooled
  guard rolled v2 back for tenant-b too).
- blocked: tenant-a floods crafted windows just before a scrambled v2 is promoted, which raised
  the pooled baseline so that v2 was kept; judged on tenant-b's own baseline, v2 is rolled back
  for tenant-b.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlserving_common.registry import FilesystemRegistry

from lifecycle_support import log_events, scrambled_package, send_series, series_values, serving_version, windows

pytestmark = pytest.mark.slow

LIFECYCLE = {
    "live_accuracy": {"window": 100},
    "drift": {"min_scored": 50, "input_window": 600},
    "auto_rollback": {"enabled": True, "margin": 0.2, "min_scored": 50, "window_seconds": 600},
}
ANN = {"models": {"ann": "current"}}
SERIES = "BTS001/1"  # tenant-b's series id, reused by tenant-a


def crafted_windows(count: int, seed: int = 3) -> list[list[float]]:
    """Consecutive windows (each shifted by one reading) of readings drawn from 5,000-6,040: scored
    like any series, with errors hundreds of times the honest ones."""
    readings = np.round(np.random.default_rng(seed).uniform(5000.0, 6040.0, count + 6), 1)
    return [[float(v) for v in readings[i - 6 : i]] for i in range(6, count + 6)]


def start_layout(layout: str, server_process, registry_root: Path) -> tuple[Any, Any]:
    """(tenant-a's server, tenant-b's server): the same process, or one process per tenant."""
    if layout == "one-process":
        both = server_process(registry=registry_root, tenants={"tenant-a": ANN, "tenant-b": ANN}, lifecycle=LIFECYCLE)
        return both, both
    return (
        server_process(registry=registry_root, tenants={"tenant-a": ANN}, lifecycle=LIFECYCLE, name="server-a"),
        server_process(registry=registry_root, tenants={"tenant-b": ANN}, lifecycle=LIFECYCLE, name="server-b"),
    )


def decisions(server: Any, tenant: str) -> list[dict[str, Any]]:
    return [e for e in log_events(server, "auto-rollback decision") if e.get("tenant") == tenant]


def any_decision(server: Any) -> list[dict[str, Any]]:
    return log_events(server, "auto-rollback decision")


def rolled_back(server: Any) -> dict[str, str]:
    return json.loads(server.get("/readyz")[1])["rolled_back"]


@pytest.mark.parametrize("layout", ["one-process", "per-tenant"])
def test_another_tenants_crafted_windows_cannot_roll_back_a_good_version(
    layout, server_process, registry_root: Path, mqtt_client, until, publish_copy, capsys
) -> None:
    server_a, server_b = start_layout(layout, server_process, registry_root)
    a, b = mqtt_client("tenant-a"), mqtt_client("tenant-b")
    values = series_values()

    # Both tenants have an honest baseline on v1.
    send_series(b, windows(values, 100, 220), SERIES, "b-v1")
    send_series(a, windows(values, 300, 420), SERIES, "a-v1")
    until(lambda: server_b.metric("mlserving_live_scored_total", tenant="tenant-b", version="v1") >= 119)
    until(lambda: server_a.metric("mlserving_live_scored_total", tenant="tenant-a", version="v1") >= 119)

    assert publish_copy(registry_root, "ann", promote=True) == "v2"  # a good promotion
    until(lambda: serving_version(server_a, "ann") == "v2" and serving_version(server_b, "ann") == "v2")

    # tenant-a's 80 crafted windows: v2 looks terrible on tenant-a's traffic.
    send_series(a, crafted_windows(80), SERIES, "a-crafted")
    until(lambda: [e for e in any_decision(server_a) if e["decision"] == "rolled back"], timeout=60)

    # tenant-b is still served v2, and its own guard keeps it.
    answers = send_series(b, windows(values, 220, 330), SERIES, "b-v2")
    assert {x["version"] for x in answers} == {"v2"}, any_decision(server_b)
    until(lambda: decisions(server_b, "tenant-b"), timeout=60)
    (kept,) = decisions(server_b, "tenant-b")
    assert kept["decision"] == "kept", kept
    assert server_b.metric("mlserving_auto_rollbacks_total", tenant="tenant-b") == 0

    # The rollback that did happen is tenant-a's own, and says so.
    (forced,) = [e for e in decisions(server_a, "tenant-a") if e["decision"] == "rolled back"]
    assert server_a.metric("mlserving_auto_rollbacks_total", tenant="tenant-a", model="ann", version="v2") == 1
    assert rolled_back(server_a) == {"tenant-a/ann:current": "v2"}
    if server_a is not server_b:
        assert rolled_back(server_b) == {}
    after_a = send_series(a, windows(values, 420, 430), SERIES, "a-after")
    assert {x["version"] for x in after_a} == {"v1"}  # the tenant whose score collapsed is pinned back
    with capsys.disabled():
        print(
            f"\nrollback forced by another tenant ({layout}): tenant-a v1 {forced['predecessor_live_mae']:.3f} ->"
            f" v2 {forced['live_mae']:.1f} (crafted) -> tenant-a pinned to v1; tenant-b v1"
            f" {kept['predecessor_live_mae']:.3f} -> v2 {kept['live_mae']:.3f}: kept, tenant-b answered by v2"
        )


@pytest.mark.parametrize("layout", ["one-process", "per-tenant"])
def test_another_tenants_crafted_windows_cannot_keep_a_bad_version(
    layout, server_process, registry_root: Path, mqtt_client, until, tmp_path: Path, capsys
) -> None:
    registry = FilesystemRegistry(registry_root)
    bad = scrambled_package(registry.fetch("ann", "v1"), tmp_path / "bad-ann")
    server_a, server_b = start_layout(layout, server_process, registry_root)
    a, b = mqtt_client("tenant-a"), mqtt_client("tenant-b")
    values = series_values()

    send_series(b, windows(values, 100, 220), SERIES, "b-v1")
    until(lambda: server_b.metric("mlserving_live_scored_total", tenant="tenant-b", version="v1") >= 119)
    # Just before the promotion: 200 crafted windows, the newest scores of v1 on this model.
    send_series(a, crafted_windows(200), SERIES, "a-crafted")
    until(lambda: server_a.metric("mlserving_live_scored_total", tenant="tenant-a", version="v1") >= 199)
    crafted_mae = server_a.metric("mlserving_live_mae", tenant="tenant-a", model="ann", version="v1", role="serving")

    assert registry.publish(bad, promote=True) == "v2"
    until(lambda: serving_version(server_a, "ann") == "v2" and serving_version(server_b, "ann") == "v2")

    start = 220
    while not any_decision(server_b) and start < 1300:
        send_series(b, windows(values, start, start + 20), SERIES, f"b-{start}")
        start += 20
    found = decisions(server_b, "tenant-b")
    assert found, any_decision(server_b)
    (decision,) = found
    assert decision["decision"] == "rolled back", decision
    assert decision["live_mae"] > decision["predecessor_live_mae"] * 1.2
    assert decision["predecessor_live_mae"] < 5  # tenant-b's own baseline, not the crafted one
    assert server_b.metric("mlserving_auto_rollbacks_total", tenant="tenant-b", model="ann", version="v2") == 1
    after = send_series(b, windows(values, start, start + 20), SERIES, "b-after")
    assert {x["version"] for x in after} == {"v1"}
    assert rolled_back(server_b) == {"tenant-b/ann:current": "v2"}
    with capsys.disabled():
        print(
            f"\nrollback blocked by another tenant ({layout}): tenant-a's crafted v1 live MAE {crafted_mae:.1f};"
            f" tenant-b v1 {decision['predecessor_live_mae']:.3f} -> scrambled v2 {decision['live_mae']:.3f}"
            f" over {decision['scored']}: rolled back for tenant-b"
        )
