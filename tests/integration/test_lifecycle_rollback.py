"""Automatic rollback of a bad promotion, and the manual rollback command, against a real server.

A package with scrambled weights passes every load check (checksum, shapes, finite warm-up) but
forecasts badly. Promoted while live traffic with a series_id flows, the server scores it,
finds its live MAE above its predecessor's by more than the margin, swaps the predecessor back
and ignores the bad version until the registry pointer moves on.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlserving_common.registry import FilesystemRegistry
from mlserving_training.cli import main

from lifecycle_support import log_events, scrambled_package, send_series, series_values, serving_version, windows

pytestmark = pytest.mark.slow

LIFECYCLE = {
    "live_accuracy": {"window": 100},
    "drift": {"min_scored": 50, "input_window": 600},
    "auto_rollback": {"enabled": True, "margin": 0.2, "min_scored": 50, "window_seconds": 600},
}


def test_bad_promotion_is_rolled_back_automatically_then_by_command(
    server_process, registry_root: Path, mqtt_client, until, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = FilesystemRegistry(registry_root)
    bad = scrambled_package(registry.fetch("ann", "v1"), tmp_path / "bad-ann")
    values = series_values()  # the demo models' own data: v1 forecasts it well
    server = server_process(
        registry=registry_root, tenants={"tenant-b": {"models": {"ann": "current"}}}, lifecycle=LIFECYCLE
    )
    client = mqtt_client("tenant-b")

    # v1 serves: its live MAE is the baseline the guard will compare with.
    answers = send_series(client, windows(values, 100, 260), "BTS001/1", "before")
    assert {a["version"] for a in answers} == {"v1"}
    until(lambda: server.metric("mlserving_live_scored_total", version="v1") >= 159)
    baseline = server.metric("mlserving_live_mae", model="ann", version="v1", role="serving")

    promoted_at = time.monotonic()
    version = registry.publish(bad, promote=True)
    assert version == "v2"
    until(lambda: serving_version(server, "ann") == "v2")
    swapped_at = time.monotonic()

    # Keep the live series going until the guard has seen enough of v2 and decided.
    start, rolled_at = 260, None
    while rolled_at is None and start < 1300:
        send_series(client, windows(values, start, start + 20), "BTS001/1", f"after-{start}")
        start += 20
        if server.metric("mlserving_auto_rollbacks_total", model="ann", version="v2") >= 1:
            rolled_at = time.monotonic()
    assert rolled_at is not None, server.log_tail()
    (decision,) = [e for e in log_events(server, "auto-rollback decision") if e["decision"] == "rolled back"]
    assert decision["version"] == "v2" and decision["predecessor"] == "v1" and decision["scored"] == 50
    assert decision["live_mae"] > decision["predecessor_live_mae"] * 1.2
    assert decision["predecessor_live_mae"] == pytest.approx(baseline, rel=0.5)
    summary = (
        f"\nauto-rollback: v1 live MAE {decision['predecessor_live_mae']:.3f}, scrambled v2 {decision['live_mae']:.3f}"
        f" over {decision['scored']} scored forecasts; swap back took {decision['swap_back_seconds'] * 1e6:.0f} us;"
        f" promote -> v2 serving {swapped_at - promoted_at:.2f} s, v2 serving -> rolled back"
        f" {decision['seconds_since_swap']:.2f} s (server clock),"
        f" promote -> rollback seen {rolled_at - promoted_at:.2f} s"
    )

    # v1 answers tenant-b again and the server ignores v2 for it although the registry still names it.
    after = send_series(client, windows(values, start, start + 30), "BTS001/1", "rolled")
    assert {a["version"] for a in after} == {"v1"}
    assert registry.current("ann") == "v2"
    assert '"rolled_back":{"tenant-b/ann:current":"v2"}' in server.get("/readyz")[1]
    time.sleep(1.0)  # several registry polls (0.2 s): v2 must stay ignored
    again = send_series(client, windows(values, start + 30, start + 35), "BTS001/1", "still")
    assert {a["version"] for a in again} == {"v1"}
    start += 5

    # One command moves the pointer back too; the block is lifted once the pointer moved on.
    assert main(["rollback", "--registry", str(registry_root), "ann"]) == 0
    assert "rolled back v2 -> v1" in capsys.readouterr().out
    assert registry.current("ann") == "v1"
    until(lambda: log_events(server, "rolled-back version unblocked"))
    assert '"rolled_back":{}' in server.get("/readyz")[1]

    # A fixed version promoted later serves normally (here: a copy of v1 as v3).
    v3 = registry.publish(registry.fetch("ann", "v1"), promote=True)
    until(lambda: serving_version(server, "ann") == v3)
    final = send_series(client, windows(values, start + 30, start + 40), "BTS001/1", "fixed")
    assert {a["version"] for a in final} == {v3}
    with capsys.disabled():
        print(summary)


def test_a_good_promotion_is_kept(server_process, registry_root: Path, mqtt_client, until, publish_copy) -> None:
    values = series_values()
    server = server_process(
        registry=registry_root, tenants={"tenant-b": {"models": {"ann": "current"}}}, lifecycle=LIFECYCLE
    )
    client = mqtt_client("tenant-b")
    send_series(client, windows(values, 100, 200), "BTS001/1", "before")
    until(lambda: server.metric("mlserving_live_scored_total", version="v1") >= 99)
    publish_copy(registry_root, "ann", promote=True)
    until(lambda: serving_version(server, "ann") == "v2")
    send_series(client, windows(values, 200, 300), "BTS001/1", "after")
    until(lambda: [e for e in log_events(server, "auto-rollback decision") if e["decision"] == "kept"])
    assert server.metric("mlserving_auto_rollbacks_total") == 0
    assert serving_version(server, "ann") == "v2"
