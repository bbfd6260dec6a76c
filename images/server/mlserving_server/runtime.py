"""One loaded model version: LiteRT interpreters per batch-size bucket, normalise -> infer -> denormalise.

Resizing a LiteRT interpreter re-plans its memory, far too slow to do per batch. So each
runtime keeps one interpreter per power-of-two bucket up to max_batch, with preallocated input
buffers; a batch runs on the smallest bucket that holds it, padded with zeros.
Only the batching worker calls `predict`, so no locking is needed here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from mlserving_common.calendar import features_after
from mlserving_common.package import MODEL_FILE, Metadata, PackageError, verify_package

_quiet_done = False


@contextlib.contextmanager
def _quiet_first_delegate() -> Iterator[None]:
    """LiteRT prints one plain-text INFO line to fd 2 when it first applies its XNNPACK
    delegate; our stderr carries JSON lines only, so the first model load is silenced. The app
    loads its first model before starting other threads, so no log line of ours is lost."""
    global _quiet_done
    if _quiet_done:
        yield
        return
    _quiet_done = True
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def buckets_for(max_batch: int) -> list[int]:
    """Powers of two below max_batch, then max_batch itself: [1, 2, 4, ..., max_batch]."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch)
    return sizes


@dataclass
class _Bucket:
    size: int
    interpreter: Interpreter
    input_index: int
    output_index: int
    buffer: np.ndarray  # (size, *input dims), float32, reused for every call


class ModelRuntime:
    """A verified, warmed-up model version, ready for the hot path."""

    def __init__(self, package_dir: Path, max_batch: int, num_threads: int = 1) -> None:
        started = time.perf_counter()
        self.package_dir = Path(package_dir)
        self.metadata: Metadata = verify_package(self.package_dir)
        self.name = self.metadata.name
        self.version = self.metadata.version
        self.window = self.metadata.window
        self.horizon = self.metadata.horizon
        #: Calendar feature names (empty: none) and the reading interval they are computed with.
        self.calendar = self.metadata.calendar_features
        self.interval_s = float(self.metadata.calendar.get("interval_s", 0.0)) if self.calendar else 0.0
        self.mean = np.float32(self.metadata.normalization.mean)
        self.std = np.float32(self.metadata.normalization.std)
        self.inv_std = np.float32(1.0) / self.std
        self.input_dims = tuple(self.metadata.input.shape[1:])
        self.output_dims = tuple(self.metadata.output.shape[1:])
        self.output_size = int(np.prod(self.output_dims))
        if int(np.prod(self.input_dims)) != self.metadata.input_width:
            raise PackageError(
                f"input.shape: {self.metadata.input.shape} must hold exactly window={self.window}"
                f" + {len(self.calendar)} calendar values"
            )
        # Read once: later changes to the file on disk cannot affect a model that serves.
        model_bytes = (self.package_dir / MODEL_FILE).read_bytes()
        with _quiet_first_delegate():
            self._buckets = [self._make_bucket(model_bytes, size, num_threads) for size in buckets_for(max_batch)]
        self.max_bucket = self._buckets[-1].size
        self._by_size = self._bucket_index()
        self._warm_up()
        self.load_seconds = time.perf_counter() - started

    def _make_bucket(self, model_bytes: bytes, size: int, num_threads: int) -> _Bucket:
        try:
            interpreter = Interpreter(model_content=model_bytes, num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise PackageError(f"{self.package_dir / MODEL_FILE}: LiteRT cannot load it ({exc})") from None
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise PackageError(f"{MODEL_FILE}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}")
        for label, detail, dims in (("input", inputs[0], self.input_dims), ("output", outputs[0], self.output_dims)):
            actual = tuple(int(d) for d in detail["shape_signature"][1:])
            if actual != dims:
                raise PackageError(
                    f"{MODEL_FILE}: {label} shape {list(detail['shape_signature'])} != metadata [-1, {dims}]"
                )
            if detail["dtype"] != np.float32:
                raise PackageError(f"{MODEL_FILE}: {label} dtype {detail['dtype']} is not float32")
        try:
            interpreter.resize_tensor_input(inputs[0]["index"], [size, *self.input_dims])
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise PackageError(f"{MODEL_FILE}: cannot resize to batch {size} ({exc})") from None
        buffer = np.zeros((size, *self.input_dims), dtype=np.float32)
        output_index = interpreter.get_output_details()[0]["index"]
        return _Bucket(size, interpreter, inputs[0]["index"], output_index, buffer)

    def _bucket_index(self) -> list[_Bucket]:
        """by_size[n] = smallest bucket holding n rows, for n in 0..max_bucket."""
        index, position = [], 0
        for n in range(self.max_bucket + 1):
            while self._buckets[position].size < n:
                position += 1
            index.append(self._buckets[position])
        return index

    def _warm_up(self) -> None:
        """Run every bucket once on realistic input; refuse models that answer NaN/inf."""
        for bucket in self._buckets:
            sample = np.full((bucket.size, self.window), self.metadata.normalization.mean, dtype=np.float32)
            sample += np.linspace(-1.0, 1.0, self.window, dtype=np.float32) * self.std
            times = np.full(bucket.size, 1.7e9) if self.calendar else None
            try:
                output = self.predict(sample, times)
            except (ValueError, RuntimeError) as exc:
                raise PackageError(f"{MODEL_FILE}: warm-up inference failed at batch {bucket.size} ({exc})") from None
            if output.shape != (bucket.size, self.output_size) or not np.isfinite(output).all():
                raise PackageError(f"{MODEL_FILE}: warm-up inference at batch {bucket.size} gave non-finite output")

    def calendar_inputs(self, last_times: np.ndarray | list[float]) -> np.ndarray:
        """A calendar model's extra inputs for windows whose last reading is at `last_times`."""
        return features_after(last_times, self.interval_s, self.calendar)

    def predict(self, windows: np.ndarray, last_times: np.ndarray | list[float] | None = None) -> np.ndarray:
        """(n, window) raw readings -> (n, output_size) forecasts in the same units (output_size is
        the horizon). A calendar model also needs each window's last reading time (unix s).

        Readings near float32's limits may overflow to inf here: the caller answers a non-finite
        forecast with an error, so numpy's RuntimeWarning (a plain-text stderr line) is muted.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (windows - self.mean) * self.inv_std
            if self.calendar:
                if last_times is None or len(last_times) != len(windows):
                    raise ValueError(f"model {self.name} {self.version} needs the time of each window's last reading")
                scaled = np.hstack([scaled, self.calendar_inputs(last_times)])
            return self._predict(scaled)

    def _predict(self, scaled: np.ndarray) -> np.ndarray:
        n = scaled.shape[0]
        result = np.empty((n, self.output_size), dtype=np.float32)
        step = self.max_bucket
        for start in range(0, n, step):
            chunk = scaled[start : start + step]
            rows = chunk.shape[0]
            bucket = self._by_size[rows]
            flat = bucket.buffer.reshape(bucket.size, -1)
            flat[:rows] = chunk
            if rows < bucket.size:
                flat[rows:] = 0.0
            bucket.interpreter.set_tensor(bucket.input_index, bucket.buffer)
            bucket.interpreter.invoke()
            result[start : start + rows] = bucket.interpreter.get_tensor(bucket.output_index)[:rows].reshape(rows, -1)
        return result * self.std + self.mean
