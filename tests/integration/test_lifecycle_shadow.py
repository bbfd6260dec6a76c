"""Shadow versions and several models per tenant, against real servers.

A shadow version runs on the same batches as the serving one and is scored on the same live
windows (role=shadow) but never answers: the answers are bit for bit those of a server without
it. Promotion can then require the shadow's live error to beat the serving version's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlserving_common.registry import FilesystemRegistry
from mlserving_training.cli import EXIT_REFUSED, main

from lifecycle_support import scrambled_package, send_one_by_one, send_series, series_values, serving_version, windows

pytestmark = pytest.mark.slow

MODELS = {"ann": "current", "lstm": "current"}


def test_shadow_never_changes_answers_and_guards_promotion(
    server_process, registry_root: Path, mqtt_client, until, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = FilesystemRegistry(registry_root)
    candidate = registry.publish(scrambled_package(registry.fetch("ann", "v1"), tmp_path / "candidate"))
    assert candidate == "v2" and registry.current("ann") == "v1"  # published, not promoted
    values = series_values()
    live = windows(values, 100, 260)
    client = mqtt_client("tenant-b")

    plain = server_process(
        registry=registry_root, name="plain", tenants={"tenant-b": {"models": MODELS, "default_model": "ann"}}
    )
    without = send_one_by_one(client, live, "BTS001/1", "plain")
    plain.stop()

    shadowed = server_process(
        registry=registry_root,
        name="shadowed",
        tenants={"tenant-b": {"models": MODELS, "default_model": "ann", "shadow": {"ann": "v2"}}},
    )
    with_shadow = send_one_by_one(client, live, "BTS001/1", "shadow")
    assert [(a["prediction"], a["model"], a["version"]) for a in with_shadow] == [
        (a["prediction"], a["model"], a["version"]) for a in without
    ]
    assert {a["version"] for a in with_shadow} == {"v1"}
    # Batched traffic too: answers come from v1 only, the shadow is scored on every window.
    bulk = send_series(client, windows(values, 260, 460), "BTS001/1", "bulk")
    assert {a["version"] for a in bulk} == {"v1"}
    until(lambda: shadowed.metric("mlserving_live_scored_total", version="v2", role="shadow") >= 359)
    serving = shadowed.metric("mlserving_live_mae", model="ann", version="v1", role="serving")
    shadow = shadowed.metric("mlserving_live_mae", model="ann", version="v2", role="shadow")
    assert shadowed.metric("mlserving_live_scored_total", version="v1", role="serving") == 359
    assert shadow > serving

    # Several models per tenant: a request may name any of them; each is scored on its own.
    lstm = send_series(client, windows(values, 460, 560), "BTS001/1", "lstm", model="lstm")
    assert {(a["model"], a["version"]) for a in lstm} == {("lstm", "v1")}
    until(lambda: shadowed.metric("mlserving_live_scored_total", model="lstm", role="serving") >= 99)
    unknown = client.request({"series": live[0], "model": "gru"})
    assert unknown["error"]["code"] == "unknown_model"

    # Guarded promotion: the scrambled shadow is worse than the serving version -> refused.
    url = shadowed.url("/metrics")
    rc = main(
        [
            "promote",
            "--registry",
            str(registry_root),
            "ann",
            "v2",
            "--require-shadow-better",
            "--metrics-url",
            url,
            "--min-scored",
            "100",
        ]
    )
    refused = capsys.readouterr().out
    assert rc == EXIT_REFUSED and "not promoted" in refused and registry.current("ann") == "v1"
    shadowed.stop()

    # The other way round: the bad version serves, the good one runs in shadow -> promoted.
    registry.promote("ann", "v2")
    swapped = server_process(
        registry=registry_root,
        name="swapped",
        tenants={"tenant-b": {"models": MODELS, "default_model": "ann", "shadow": {"ann": "v1"}}},
    )
    send_series(client, windows(values, 560, 760), "BTS001/1", "swapped")
    until(lambda: swapped.metric("mlserving_live_scored_total", version="v1", role="shadow") >= 199)
    rc = main(
        [
            "promote",
            "--registry",
            str(registry_root),
            "ann",
            "v1",
            "--require-shadow-better",
            "--metrics-url",
            swapped.url("/metrics"),
            "--min-scored",
            "100",
        ]
    )
    accepted = capsys.readouterr().out
    assert rc == 0 and registry.current("ann") == "v1", accepted
    until(lambda: serving_version(swapped, "ann") == "v1")
    with capsys.disabled():
        print(
            f"\nshadow: serving v1 live MAE {serving:.3f}, scrambled v2 in shadow {shadow:.3f} -> {refused.strip()}"
            f"\nreverse: {accepted.strip()}"
        )
