"""metadata.json against its schema (Metadata.validate / from_dict): the good case and each bad kind."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from mlserving_common.package import (
    METADATA_FILE,
    MODEL_FILE,
    Metadata,
    Normalization,
    PackageError,
    TensorSpec,
    histogram_fractions,
    population_stability_index,
    read_metadata,
    verify_package,
    write_package,
)

MODEL_BYTES = b"not a real flatbuffer; the package format does not parse it"


def good_dict() -> dict[str, Any]:
    metadata = Metadata(
        name="lstm",
        version="v0",
        created_at="2026-01-01T00:00:00Z",
        window=6,
        normalization=Normalization(mean=20.0, std=4.0),
        input=TensorSpec([-1, 6]),
        output=TensorSpec([-1, 1]),
        model_sha256=hashlib.sha256(MODEL_BYTES).hexdigest(),
        series_id="BTS001/1",
        metrics={"test": {"mae": 0.5, "naive_mae": 1.0}, "beats_naive": True},
    )
    return json.loads(metadata.to_json())


def test_good_metadata_round_trips_through_json() -> None:
    raw = good_dict()
    metadata = Metadata.from_dict(raw)
    assert json.loads(metadata.to_json()) == raw
    assert metadata.format == "ml-serving-model/1"


@pytest.mark.parametrize("version", ["v0", "v1", "v2", "v10", "v123"])
def test_versions_that_are_allowed(version: str) -> None:
    raw = good_dict() | {"version": version}
    assert Metadata.from_dict(raw).version == version


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target = raw
    *parents, last = path.split(".")
    for key in parents:
        target = target[key]
    target[last] = value
    return raw


BAD_VALUES = [
    ("format", "ml-serving-model/2", "format"),
    ("name", "Has Capitals", "name"),
    ("name", "", "name"),
    ("name", "-leading-dash", "name"),
    ("version", "1", "version"),
    ("version", "v01", "version"),
    ("version", "latest", "version"),
    ("window", 0, "window"),
    ("window", 5000, "window"),
    ("normalization.std", 0.0, "normalization.std"),
    ("normalization.std", -1.0, "normalization.std"),
    ("model_sha256", "abc", "model_sha256"),
    ("model_sha256", "G" * 64, "model_sha256"),
    ("input.dtype", "int8", "input.dtype"),
    ("output.dtype", "float64", "output.dtype"),
    ("input.shape", [1, 6], "input.shape"),
    ("input.shape", [], "input.shape"),
    ("output.shape", [-1, 0], "output.shape"),
    ("input.shape", [-1, 5], "input.shape"),
]


@pytest.mark.parametrize(("path", "value", "named"), BAD_VALUES, ids=[f"{p}={v!r}" for p, v, _ in BAD_VALUES])
def test_each_bad_value_is_refused_naming_its_field(path: str, value: Any, named: str) -> None:
    with pytest.raises(PackageError, match=f"^{named}"):
        Metadata.from_dict(_set(good_dict(), path, value))


@pytest.mark.parametrize(
    "field", ["name", "version", "created_at", "window", "normalization", "input", "output", "model_sha256"]
)
def test_missing_required_field_is_refused(field: str) -> None:
    raw = good_dict()
    del raw[field]
    with pytest.raises(PackageError, match=METADATA_FILE):
        Metadata.from_dict(raw)


@pytest.mark.parametrize(
    ("path", "value"),
    [("normalization", [20.0, 4.0]), ("input", "[-1, 6]"), ("normalization.scale", 1.0), ("surprise", 1)],
)
def test_mistyped_or_unknown_fields_are_refused(path: str, value: Any) -> None:
    with pytest.raises(PackageError):
        Metadata.from_dict(_set(good_dict(), path, value))


def _package(tmp_path: Path, raw: dict[str, Any] | None = None, model: bytes = MODEL_BYTES) -> Path:
    (tmp_path / MODEL_FILE).write_bytes(model)
    (tmp_path / METADATA_FILE).write_text(json.dumps(raw or good_dict()))
    return tmp_path


def test_verify_package_accepts_a_good_package(tmp_path: Path) -> None:
    assert verify_package(_package(tmp_path)).name == "lstm"


def test_verify_package_refuses_a_tampered_model(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="sha256"):
        verify_package(_package(tmp_path, model=MODEL_BYTES + b"!"))


def test_verify_package_refuses_a_missing_model(tmp_path: Path) -> None:
    _package(tmp_path)
    (tmp_path / MODEL_FILE).unlink()
    with pytest.raises(PackageError, match="missing"):
        verify_package(tmp_path)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_unreadable_metadata_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / METADATA_FILE).write_bytes(content.encode("latin-1"))
    with pytest.raises(PackageError, match=METADATA_FILE):
        read_metadata(tmp_path)


def test_missing_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="missing"):
        read_metadata(tmp_path)


def test_write_package_refuses_bytes_that_do_not_match_the_checksum(tmp_path: Path) -> None:
    metadata = Metadata.from_dict(good_dict())
    with pytest.raises(PackageError, match="model_sha256"):
        write_package(tmp_path / "pkg", b"other bytes", metadata)
    write_package(tmp_path / "pkg", MODEL_BYTES, metadata)
    assert verify_package(tmp_path / "pkg") == metadata
    assert asdict(read_metadata(tmp_path / "pkg")) == asdict(metadata)


def test_histogram_fractions_clip_outliers_into_the_end_bins() -> None:
    edges = [-1.0, 0.0, 1.0]
    assert histogram_fractions([-5, -0.5, -0.1, 0.0, 1.0, 7], edges) == [0.5, 0.5]
    assert histogram_fractions([], edges) == [0.0, 0.0]


def test_population_stability_index_is_zero_for_equal_and_grows_with_shift() -> None:
    base = [0.25, 0.25, 0.25, 0.25]
    assert population_stability_index(base, base) == 0.0
    small = population_stability_index(base, [0.2, 0.3, 0.25, 0.25])
    large = population_stability_index(base, [0.0, 0.1, 0.4, 0.5])
    assert 0 < small < 0.1 < large
