"""Keras models that map a whole window to the next value, and their training loop.

Both take input (batch, window) so the server feeds every model the same way. The LSTM is
unrolled: that is what lets it convert to builtin TFLite ops (a default Keras LSTM needs Flex
ops, which LiteRT cannot run) with a resizable batch dimension. TensorFlow is imported here
and in export.py only, and only when called.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlserving_training.features import Dataset


@dataclass
class TrainOutcome:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    cpu_seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Same seed, same weights: Python, NumPy and TF seeds plus deterministic TF kernels."""
    import keras
    import tensorflow as tf

    # Fresh layer-name counters too: names end up in the .tflite, so same seed -> same bytes.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_model(kind: str, window: int, units: int = 32) -> Any:
    import keras

    inputs = keras.Input(shape=(window,), name="window")
    if kind == "lstm":
        x = keras.layers.Reshape((window, 1), name="steps")(inputs)
        x = keras.layers.LSTM(units, return_sequences=True, unroll=True, name="lstm_1")(x)
        x = keras.layers.LSTM(units, unroll=True, name="lstm_2")(x)
    elif kind == "ann":
        x = keras.layers.Dense(2 * units, activation="relu", name="dense_1")(inputs)
        x = keras.layers.Dense(units, activation="relu", name="dense_2")(x)
    else:
        raise ValueError(f"model: unknown kind {kind!r} (lstm or ann)")
    outputs = keras.layers.Dense(1, name="next")(x)
    return keras.Model(inputs, outputs, name=kind)


def _epoch_printer(total: int, emit: Callable[[str], None]) -> Any:
    import keras

    class EpochPrinter(keras.callbacks.Callback):
        """One line per epoch so that long trainings in a Job's log show where they are."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            emit(
                f"epoch {epoch + 1}/{total} loss={logs.get('loss', float('nan')):.6f}"
                f" val_loss={logs.get('val_loss', float('nan')):.6f}"
                f" ({time.perf_counter() - self._started:.1f}s)"
            )

    return EpochPrinter()


def train_model(
    model: Any,
    data: Dataset,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    emit: Callable[[str], None] = print,
) -> TrainOutcome:
    """Adam on MSE with early stopping on validation loss (best weights restored)."""
    import keras

    # XLA compiles the unrolled LSTM for minutes on small machines and gains nothing here.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", jit_compile=False)
    callbacks = [_epoch_printer(epochs, emit)]
    if patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        )
    started, cpu_started = time.perf_counter(), time.process_time()
    history = model.fit(
        data.train.x,
        data.train.y,
        validation_data=(data.val.x, data.val.y),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    losses = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    val = losses.get("val_loss", [float("nan")])
    best = min(range(len(val)), key=val.__getitem__)
    return TrainOutcome(len(val), best + 1, val[best], seconds, cpu_seconds, losses)


def predict(model: Any, x: Any) -> Any:
    """Direct call rather than model.predict: no tf.function tracing for a one-off batch."""
    return np.array(model(np.asarray(x, dtype=np.float32), training=False), dtype=np.float32).reshape(-1)
