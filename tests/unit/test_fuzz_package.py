"""Fuzzing the model-package loader: a corrupted package is refused with PackageError, never a crash.

Three layers, each on damaged copies of a real trained package:
- metadata.json: mutated values, wrong types, missing keys, garbage bytes -> read_metadata either
  accepts a valid Metadata or raises PackageError (nothing else: the registry and the server rely
  on that to refuse instead of failing);
- the files: missing, truncated, bit-flipped -> verify_package raises PackageError;
- LiteRT: model.tflite damaged *with a matching checksum* (a broken converter, or someone who
  recomputed the hash) goes through the server's load path, `sandbox.probe` (a child process)
  and then `ModelRuntime`. Such files made LiteRT segfault in fuzzing; the probe turns that into
  a refusal, so this test process (like the server) survives every example.
Example counts are bounded; HYPOTHESIS_PROFILE=fuzz raises them (docs/security.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlserving_common.package import METADATA_FILE, MODEL_FILE, Metadata, PackageError, read_metadata, verify_package

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# LiteRT examples cost a fork and a model load each: fewer of them.
LITERT_EXAMPLES = max(10, PROFILE.max_examples // 3)

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON = st.recursive(
    SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=8
)


@pytest.fixture(scope="module")
def good_package(model_registry) -> Path:
    return model_registry.packages["lstm"]


@pytest.fixture(scope="module")
def good_metadata(good_package) -> dict[str, Any]:
    return json.loads((good_package / METADATA_FILE).read_text())


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON object (to pick one to damage)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    return found


def _accepts_or_refuses(raw: Any) -> None:
    try:
        metadata = Metadata.from_dict(raw) if isinstance(raw, dict) else None
    except PackageError as exc:
        assert str(exc)
        event("refused")
        return
    if metadata is not None:
        metadata.validate()
        event("accepted")


@PROFILE
@given(data=st.data(), value=JSON)
def test_metadata_with_a_damaged_value_is_accepted_valid_or_refused(good_metadata, data, value) -> None:
    raw = copy.deepcopy(good_metadata)
    path = data.draw(st.sampled_from(_paths(raw)), label="path")
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    _accepts_or_refuses(raw)


@PROFILE
@given(data=st.data())
def test_metadata_with_missing_or_extra_keys_is_refused_or_valid(good_metadata, data) -> None:
    raw = copy.deepcopy(good_metadata)
    paths = data.draw(st.lists(st.sampled_from(_paths(raw)), min_size=1, max_size=4), label="delete")
    for path in sorted(set(paths), key=len, reverse=True):
        node = raw
        try:
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
        except (KeyError, TypeError):
            pass
    if data.draw(st.booleans(), label="add unknown key"):
        raw[data.draw(st.text(min_size=1, max_size=8), label="key")] = data.draw(JSON, label="value")
    _accepts_or_refuses(raw)


@PROFILE
@given(data=st.data())
def test_garbled_metadata_file_is_refused_or_valid(good_package, tmp_path_factory, data) -> None:
    text = (good_package / METADATA_FILE).read_bytes()
    mutated = bytearray(text)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        position = data.draw(st.integers(0, len(mutated) - 1), label="at")
        choice = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]), label="edit")
        if choice == "flip":
            mutated[position] ^= 1 << data.draw(st.integers(0, 7))
        elif choice == "delete":
            del mutated[position : position + data.draw(st.integers(1, 32))]
        elif choice == "insert":
            mutated[position:position] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del mutated[position:]
        if not mutated:
            break
    package = tmp_path_factory.mktemp("garbled")
    (package / METADATA_FILE).write_bytes(bytes(mutated))
    try:
        read_metadata(package)
        event("accepted")
    except PackageError:
        event("refused")


@pytest.mark.parametrize(
    "damage",
    [
        "no metadata",
        "no model",
        "metadata is a directory",
        "model is a directory",
        "empty model",
        "truncated model",
        "bit flip",
        "metadata not an object",
        "metadata not utf-8",
        "deeply nested metadata",
    ],
)
def test_damaged_package_files_are_refused(good_package, tmp_path, damage) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(good_package, package)
    model, metadata = package / MODEL_FILE, package / METADATA_FILE
    if damage == "no metadata":
        metadata.unlink()
    elif damage == "no model":
        model.unlink()
    elif damage == "metadata is a directory":
        metadata.unlink()
        metadata.mkdir()
    elif damage == "model is a directory":
        model.unlink()
        model.mkdir()
    elif damage == "empty model":
        model.write_bytes(b"")
    elif damage == "truncated model":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif damage == "bit flip":
        data = bytearray(model.read_bytes())
        data[len(data) // 3] ^= 0x10
        model.write_bytes(bytes(data))
    elif damage == "metadata not an object":
        metadata.write_text("[1, 2, 3]")
    elif damage == "metadata not utf-8":
        metadata.write_bytes(b"\xff\xfe{" + metadata.read_bytes())
    elif damage == "deeply nested metadata":
        metadata.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PackageError):
        verify_package(package)


# -- LiteRT: the server's load path on models whose checksum matches --------------------------

MODEL_EDITS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
        st.tuples(st.just("zero"), st.floats(0, 1, exclude_max=True), st.integers(1, 256)),
        st.tuples(st.just("random"), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
    ),
    min_size=1,
    max_size=6,
)


def _edit_model(data: bytes, edits: list[tuple]) -> bytes:
    out = bytearray(data)
    for kind, where, arg in edits:
        if not out:
            break
        at = int(where * len(out))
        if kind == "flip":
            out[at] ^= 1 << arg
        elif kind == "zero":
            out[at : at + arg] = bytes(len(out[at : at + arg]))
        elif kind == "random":
            out[at : at + len(arg)] = arg[: len(out) - at]
        else:
            del out[at:]
    return bytes(out)


def _repackage(package: Path, model_bytes: bytes, metadata: dict[str, Any]) -> None:
    """Write the damaged model with a checksum that matches it, so only LiteRT can tell."""
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    (package / MODEL_FILE).write_bytes(model_bytes)
    (package / METADATA_FILE).write_text(
        json.dumps({**metadata, "model_sha256": hashlib.sha256(model_bytes).hexdigest()})
    )


@settings(PROFILE, max_examples=LITERT_EXAMPLES)
@given(edits=MODEL_EDITS)
def test_damaged_model_with_matching_checksum_is_refused_or_loads_never_crashes(
    good_package, good_metadata, tmp_path_factory, edits
) -> None:
    from mlserving_server import sandbox
    from mlserving_server.runtime import ModelRuntime

    package = tmp_path_factory.mktemp("litert")
    _repackage(package, _edit_model((good_package / MODEL_FILE).read_bytes(), edits), good_metadata)
    try:
        sandbox.probe(package, 4)
    except PackageError as exc:
        event("refused: LiteRT crashed" if "crashed" in str(exc) else "refused")
        return
    # The child loaded it (e.g. a flipped weight is still a model): so does the server, then it serves.
    runtime = ModelRuntime(package, 4)
    event("loaded")
    assert runtime.window == good_metadata["window"]


def test_probe_refuses_what_model_runtime_refuses_and_passes_good_packages(
    good_package, good_metadata, tmp_path
) -> None:
    from mlserving_server import sandbox

    sandbox.probe(good_package, 8)  # the real model loads and warms up in the child
    package = tmp_path / "garbage"
    _repackage(package, b"this is not a flatbuffer" * 40, good_metadata)
    with pytest.raises(PackageError, match="LiteRT cannot load it"):
        sandbox.probe(package, 8)
    # From a thread (as the registry poller does) the child is a fresh interpreter, same verdicts.
    import threading

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            sandbox.probe(package, 8)
        except PackageError as exc:
            outcome["error"] = str(exc)
        sandbox.probe(good_package, 8)
        outcome["good"] = True

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    assert "LiteRT cannot load it" in outcome.get("error", "") and outcome.get("good")


# -- regressions: damaged LSTM models the fuzzers found (tests/data) -------------------------------

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize(
    "name, reason",
    [
        ("litert-segfault.tflite.gz", "LiteRT crashed loading it (SIGSEGV)"),  # zeroed operator table
        ("litert-23gb-alloc.tflite.gz", "warm-up inference failed"),  # asked for 23 GB: OOM killer without the cap
    ],
)
@pytest.mark.parametrize("child", ["fork", "fresh interpreter"])
def test_models_that_kill_litert_are_refused_and_this_process_survives(good_metadata, tmp_path, name, reason, child):
    import gzip
    import threading

    from mlserving_server import sandbox

    package = tmp_path / "package"
    _repackage(package, gzip.decompress((DATA / name).read_bytes()), good_metadata)
    outcome: dict[str, str] = {}

    def probe() -> None:
        try:
            sandbox.probe(package, 8)
            outcome["result"] = "loaded"
        except PackageError as exc:
            outcome["result"] = str(exc)

    if child == "fork":  # no other thread: the server's first load
        probe()
    else:  # from a thread, as the registry poller does
        thread = threading.Thread(target=probe)
        thread.start()
        thread.join(120)
    assert reason in outcome["result"]
