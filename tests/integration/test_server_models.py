"""Hot swaps under load, refusal of broken packages, pinned versions."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading

import pytest

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


@pytest.mark.slow
def test_promote_v2_under_load_switches_version_once_and_loses_nothing(
    server_process, registry_root, mqtt_client, load, publish_copy, until
):
    server = server_process(registry_root)
    client = mqtt_client("tenant-a")
    promoted = threading.Event()

    def progress(i: int) -> None:
        if i == 1000 and not promoted.is_set():
            promoted.set()
            publish_copy(registry_root, "lstm", promote=True)

    result = load(client, 4000, SERIES, rate=1000, timeout=60, on_progress=progress)
    assert result["lost"] == 0
    assert result["errors"] == []
    versions = result["versions"]
    switches = sum(1 for a, b in itertools.pairwise(versions) if a != b)
    assert versions[0] == "v1" and versions[-1] == "v2", (versions[0], versions[-1])
    assert switches == 1, f"versions switched {switches} times"
    assert server.metric("mlserving_model_info", tenant="tenant-a", model="lstm", version="v2") == 1


def _corrupt_bytes(package_dir):
    model = package_dir / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    model.write_bytes(bytes(data))


def _garbage_model_with_matching_checksum(package_dir):
    garbage = b"this is not a flatbuffer" * 100
    (package_dir / "model.tflite").write_bytes(garbage)
    metadata = json.loads((package_dir / "metadata.json").read_text())
    metadata["model_sha256"] = hashlib.sha256(garbage).hexdigest()
    (package_dir / "metadata.json").write_text(json.dumps(metadata))


def _wrong_window(package_dir):
    metadata = json.loads((package_dir / "metadata.json").read_text())
    metadata["window"] = metadata["window"] + 1
    metadata["input"]["shape"][1] = metadata["window"]
    (package_dir / "metadata.json").write_text(json.dumps(metadata))


@pytest.mark.parametrize("damage", [_corrupt_bytes, _garbage_model_with_matching_checksum, _wrong_window])
def test_broken_package_is_refused_and_old_version_keeps_serving(
    server_process, registry_root, mqtt_client, publish_copy, until, damage
):
    from mlserving_common.registry import FilesystemRegistry

    server = server_process(registry_root)
    client = mqtt_client("tenant-a")
    registry = FilesystemRegistry(registry_root)
    broken = publish_copy(registry_root, "lstm")
    damage(registry.fetch("lstm", broken))
    registry.promote("lstm", broken)
    until(lambda: server.metric("mlserving_model_load_failures_total", model="lstm", version=broken) >= 1)
    answer = client.request({"series": SERIES})
    assert (answer.get("version"), answer.get("model")) == ("v1", "lstm"), answer
    assert server.is_ready()
    # A good version promoted afterwards is taken.
    good = publish_copy(registry_root, "lstm", promote=True)
    until(lambda: client.request({"series": SERIES}).get("version") == good)


def test_pinned_version_ignores_promotions(server_process, registry_root, mqtt_client, publish_copy, until):
    tenants = {"tenant-a": {"models": {"lstm": "v1"}}, "tenant-b": {"models": {"lstm": "current"}}}
    server = server_process(registry_root, tenants=tenants)
    a, b = mqtt_client("tenant-a"), mqtt_client("tenant-b")
    new = publish_copy(registry_root, "lstm", promote=True)
    until(lambda: b.request({"series": SERIES}).get("version") == new)
    assert a.request({"series": SERIES})["version"] == "v1"
    assert server.metric("mlserving_model_info", tenant="tenant-a", model="lstm", version="v1") == 1
