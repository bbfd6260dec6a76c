"""The model package format, version 1 (documented in docs/model-package.md).

A package is a directory with `model.tflite` and `metadata.json`. The trainer writes it,
registries store and move it, the server verifies and loads it. This module is the one
definition all of them use; it imports neither TensorFlow nor LiteRT.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

PACKAGE_FORMAT = "ml-serving-model/1"
MODEL_FILE = "model.tflite"
METADATA_FILE = "metadata.json"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
VERSION_PATTERN = re.compile(r"^v(0|[1-9][0-9]*)$")
#: Version of a package that no registry has published yet; publishing assigns v1, v2, ...
UNPUBLISHED_VERSION = "v0"
DTYPES = frozenset({"float32"})


class PackageError(ValueError):
    """A package that must not serve: the message names the file or field at fault."""


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TensorSpec:
    """Shape with -1 for the resizable batch dimension, plus dtype."""

    shape: list[int]
    dtype: str = "float32"


@dataclass(frozen=True)
class Normalization:
    """z-score parameters fitted on the training split; the server applies them."""

    mean: float
    std: float


@dataclass(frozen=True)
class Metadata:
    """Contents of metadata.json; `validate()` is the schema."""

    name: str
    version: str
    created_at: str
    window: int
    normalization: Normalization
    input: TensorSpec
    output: TensorSpec
    model_sha256: str
    series_id: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    input_stats: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    framework: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    #: Readings forecast per inference (1 = next value only); output.shape is [-1, horizon].
    horizon: int = 1
    #: Calendar inputs after the window, e.g. {"features": ["day_sin", ...], "interval_s": 1800};
    #: empty = none. See mlserving_common.calendar, which trainer and server both use.
    calendar: dict[str, Any] = field(default_factory=dict)
    #: The quality gate this version was published under: {"passed", "forced", "reason", ...};
    #: empty = published without one. `forced: true` = promoted over a refusal (--force), on record.
    gate: dict[str, Any] = field(default_factory=dict)
    format: str = PACKAGE_FORMAT

    @property
    def calendar_features(self) -> tuple[str, ...]:
        return tuple(self.calendar.get("features", ())) if self.calendar else ()

    @property
    def input_width(self) -> int:
        """Values per input row: the window, then one per calendar feature."""
        return self.window + len(self.calendar_features)

    def validate(self) -> None:
        """Raise PackageError naming the first field that breaks the format."""
        self._validate_types()
        checks: list[tuple[bool, str]] = [
            (self.format == PACKAGE_FORMAT, f"format: expected {PACKAGE_FORMAT!r}, got {self.format!r}"),
            (bool(NAME_PATTERN.match(self.name)), f"name: {self.name!r} must match {NAME_PATTERN.pattern}"),
            (
                bool(VERSION_PATTERN.match(self.version)),
                f"version: {self.version!r} must look like v0 (unpublished), v1, v2, ...",
            ),
            (_is_int(self.window) and 1 <= self.window <= 4096, f"window: {reprlib.repr(self.window)} must be 1..4096"),
            (self.normalization.std > 0, f"normalization.std: {self.normalization.std!r} must be > 0"),
            (bool(re.fullmatch(r"[0-9a-f]{64}", self.model_sha256)), "model_sha256: must be 64 hex digits"),
        ]
        for ok, message in checks:
            if not ok:
                raise PackageError(message)
        for label, spec in (("input", self.input), ("output", self.output)):
            if spec.dtype not in DTYPES:
                raise PackageError(f"{label}.dtype: {spec.dtype!r} is not one of {sorted(DTYPES)}")
            if not spec.shape or spec.shape[0] != -1 or any(d <= 0 for d in spec.shape[1:]):
                raise PackageError(f"{label}.shape: {spec.shape!r} must be [-1, positive dims...]")
        self._validate_horizon_and_calendar()
        if len(self.input.shape) < 2 or self.input.shape[1] != self.input_width:
            raise PackageError(
                f"input.shape: {self.input.shape!r} must be [-1, window={self.window}"
                + (f" + {len(self.calendar_features)} calendar features" if self.calendar_features else "")
                + ", ...]"
            )

    def _validate_horizon_and_calendar(self) -> None:
        """Optional fields of day-ahead and calendar models; absent they mean 1 step, no calendar."""
        if not (_is_int(self.horizon) and 1 <= self.horizon <= 4096):
            raise PackageError(f"horizon: {reprlib.repr(self.horizon)} must be 1..4096")
        if self.output.shape[1:] != [self.horizon]:
            raise PackageError(f"output.shape: {self.output.shape!r} must be [-1, horizon={self.horizon}]")
        if not self.calendar:
            return
        from mlserving_common.calendar import CALENDAR_FEATURES

        names = self.calendar.get("features")
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n in CALENDAR_FEATURES for n in names)
            or len(set(names)) != len(names)
        ):
            raise PackageError(
                f"calendar.features: {reprlib.repr(names)} must be distinct names among {list(CALENDAR_FEATURES)}"
            )
        interval = self.calendar.get("interval_s")
        if not (_is_number(interval) and math.isfinite(interval) and interval > 0):
            raise PackageError(f"calendar.interval_s: {reprlib.repr(interval)} must be a number of seconds > 0")
        if len(self.input.shape) != 2:
            raise PackageError(
                f"input.shape: {self.input.shape!r} must be [-1, window + calendar features] for a calendar model"
            )

    def _validate_types(self) -> None:
        """Wrong JSON types (a corrupted or hand-edited file) are PackageErrors too, never TypeErrors."""
        for label, value in (
            ("format", self.format),
            ("name", self.name),
            ("version", self.version),
            ("created_at", self.created_at),
            ("model_sha256", self.model_sha256),
            ("series_id", self.series_id),
        ):
            if not isinstance(value, str):
                raise PackageError(f"{label}: {reprlib.repr(value)} must be a string")
        for label, number in (
            ("normalization.mean", self.normalization.mean),
            ("normalization.std", self.normalization.std),
        ):
            if not (_is_number(number) and math.isfinite(number)):
                raise PackageError(f"{label}: {reprlib.repr(number)} must be a finite number")
        for label, spec in (("input", self.input), ("output", self.output)):
            if not isinstance(spec.shape, list) or not all(_is_int(d) for d in spec.shape):
                raise PackageError(f"{label}.shape: {reprlib.repr(spec.shape)} must be a list of integers")
            if not isinstance(spec.dtype, str):
                raise PackageError(f"{label}.dtype: {reprlib.repr(spec.dtype)} must be a string")
        for label, obj in (
            ("metrics", self.metrics),
            ("data", self.data),
            ("input_stats", self.input_stats),
            ("training", self.training),
            ("framework", self.framework),
            ("parity", self.parity),
            ("calendar", self.calendar),
            ("gate", self.gate),
        ):
            if not isinstance(obj, dict):
                raise PackageError(f"{label}: {reprlib.repr(obj)} must be a JSON object")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Metadata:
        """Build from parsed JSON; missing or mistyped fields raise PackageError."""
        try:
            body = dict(raw)
            body["normalization"] = Normalization(**body["normalization"])
            body["input"] = TensorSpec(**body["input"])
            body["output"] = TensorSpec(**body["output"])
            metadata = cls(**body)
        except (KeyError, TypeError) as exc:
            raise PackageError(f"{METADATA_FILE}: {exc}") from None
        metadata.validate()
        return metadata


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(package_dir: Path) -> Metadata:
    """Parse and validate metadata.json without touching the model file."""
    path = Path(package_dir) / METADATA_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PackageError(f"{path}: missing") from None
    except OSError as exc:  # a directory in its place, no permission, I/O error
        raise PackageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise PackageError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise PackageError(f"{path}: must hold a JSON object")
    return Metadata.from_dict(raw)


def verify_package(package_dir: Path) -> Metadata:
    """Metadata valid and model.tflite matches its recorded sha256 — or PackageError."""
    metadata = read_metadata(package_dir)
    model_path = Path(package_dir) / MODEL_FILE
    if not model_path.is_file():
        raise PackageError(f"{model_path}: missing")
    try:
        actual = sha256_file(model_path)
    except OSError as exc:
        raise PackageError(f"{model_path}: cannot read it ({exc.strerror or exc})") from None
    if actual != metadata.model_sha256:
        raise PackageError(f"{model_path}: sha256 {actual} does not match metadata {metadata.model_sha256}")
    return metadata


def write_package(package_dir: Path, model_bytes: bytes, metadata: Metadata) -> None:
    """Write a package directory; callers publish it through a registry, which makes it atomic."""
    metadata.validate()
    if hashlib.sha256(model_bytes).hexdigest() != metadata.model_sha256:
        raise PackageError("model_sha256 does not match the model bytes being written")
    package_dir = Path(package_dir)
    package_dir.mkdir(parents=True, exist_ok=True)
    (package_dir / MODEL_FILE).write_bytes(model_bytes)
    (package_dir / METADATA_FILE).write_text(metadata.to_json())


def histogram_fractions(values: Iterable[float], edges: Sequence[float]) -> list[float]:
    """Fractions of `values` per bin of `edges` (len(edges) - 1 bins), as in metadata.input_stats.

    Bins are [e0, e1), [e1, e2), ..., [e(n-1), en]; values outside the edges count in the first
    or last bin, so trainer and server bin live inputs identically for drift (PSI) checks.
    """
    counts = [0] * (len(edges) - 1)
    total = 0
    for value in values:
        index = bisect.bisect_right(edges, value) - 1
        counts[min(max(index, 0), len(counts) - 1)] += 1
        total += 1
    return [c / total for c in counts] if total else [0.0] * len(counts)


def population_stability_index(expected: Sequence[float], actual: Sequence[float], floor: float = 1e-4) -> float:
    """PSI between two histograms over the same bins; empty bins are floored to keep it finite."""
    if len(expected) != len(actual):
        raise ValueError("histograms must have the same number of bins")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, floor), max(a, floor)
        total += (a - e) * math.log(a / e)
    return total
