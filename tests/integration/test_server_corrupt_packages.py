"""Corrupted packages promoted while the server is under load: each is refused, serving goes on.

The unit fuzzers (tests/unit/test_fuzz_package.py) show the loader refuses damaged packages; this
checks the running server: a series of broken versions is promoted one after the other while a
tenant sends a steady load, and every request is answered by the version that was serving.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

SERIES = [20.1, 20.4, 21.0, 21.6, 22.0, 22.3]


def _metadata(package: Path, **changes) -> None:
    metadata = json.loads((package / "metadata.json").read_text())
    for dotted, value in changes.items():
        node = metadata
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (package / "metadata.json").write_text(json.dumps(metadata))


def _model_with_matching_checksum(package: Path, model: bytes) -> None:
    (package / "model.tflite").write_bytes(model)
    _metadata(package, model_sha256=hashlib.sha256(model).hexdigest())


DAMAGES = {
    "truncated model, checksum matches": lambda p: _model_with_matching_checksum(
        p, (p / "model.tflite").read_bytes()[: (p / "model.tflite").stat().st_size // 3]
    ),
    "zeroed model tail, checksum matches": lambda p: _model_with_matching_checksum(
        p, (p / "model.tflite").read_bytes()[:-4096] + bytes(4096)
    ),
    "model bytes flipped": lambda p: (p / "model.tflite").write_bytes(
        bytes(b ^ 0xFF if i % 997 == 0 else b for i, b in enumerate((p / "model.tflite").read_bytes()))
    ),
    "model missing": lambda p: (p / "model.tflite").unlink(),
    "metadata missing": lambda p: (p / "metadata.json").unlink(),
    "metadata not JSON": lambda p: (p / "metadata.json").write_text("{not json"),
    "std is a string": lambda p: _metadata(p, normalization__std="4.0"),
    "std is zero": lambda p: _metadata(p, normalization__std=0),
    "mean is NaN": lambda p: _metadata(p, normalization__mean=float("nan")),
    "shape not a list": lambda p: _metadata(p, input__shape=6),
    "window disagrees with the model": lambda p: _metadata(p, window=7, input__shape=[-1, 7]),
}


@pytest.mark.slow
def test_corrupted_versions_promoted_under_load_are_refused_and_nothing_is_lost(
    server_process, registry_root, mqtt_client, load, publish_copy, until
):
    from mlserving_common.registry import FilesystemRegistry

    server = server_process(registry_root)
    client = mqtt_client("tenant-a")
    registry = FilesystemRegistry(registry_root)
    refused: dict[str, str] = {}
    done = threading.Event()

    def promote_broken() -> None:
        try:
            for name, damage in DAMAGES.items():
                version = publish_copy(registry_root, "lstm")
                damage(registry.fetch("lstm", version))
                registry.promote("lstm", version)
                until(
                    lambda version=version: (
                        server.metric("mlserving_model_load_failures_total", model="lstm", version=version) >= 1
                    ),
                    timeout=60,
                )
                refused[name] = version
        finally:
            done.set()

    def progress(i: int) -> None:
        if i == 200:
            threading.Thread(target=promote_broken, daemon=True).start()

    result = load(client, 4000, SERIES, rate=200, timeout=60, on_progress=progress)
    assert done.wait(120)
    print(
        f"\ncorrupt packages: {len(refused)} broken versions promoted under load, all refused; "
        f"sent {result['sent']} answered {result['answered']} errors {len(result['errors'])} lost {result['lost']}"
    )
    assert sorted(refused) == sorted(DAMAGES), sorted(set(DAMAGES) - set(refused))
    assert result["lost"] == 0 and result["errors"] == []
    assert set(result["versions"]) == {"v1"}
    assert server.proc.poll() is None and server.is_ready()
    reasons = [line for line in server.log().splitlines() if '"model refused"' in line or "model refused" in line]
    assert len(reasons) >= len(DAMAGES)
    # and a good version promoted afterwards is taken
    good = publish_copy(registry_root, "lstm", promote=True)
    until(lambda: client.request({"series": SERIES}).get("version") == good, timeout=60)
