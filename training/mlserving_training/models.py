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


def build_model(kind: str, window: int, units: int = 32, horizon: int = 1, extra_inputs: int = 0) -> Any:
    """Input (batch, window + extra_inputs): the window, then calendar features; output (batch, horizon).

    `linear` is one Dense layer on the whole input row: the linear autoregression baseline,
    exported and served like the others (its weights come from `fit_linear`, not from Adam).
    """
    import keras

    inputs = keras.Input(shape=(window + extra_inputs,), name="window")
    if kind == "lstm":
        readings = inputs if not extra_inputs else keras.layers.Lambda(lambda t: t[:, :window], name="readings")(inputs)
        x = keras.layers.Reshape((window, 1), name="steps")(readings)
        x = keras.layers.LSTM(units, return_sequences=True, unroll=True, name="lstm_1")(x)
        x = keras.layers.LSTM(units, unroll=True, name="lstm_2")(x)
        if extra_inputs:
            extra = keras.layers.Lambda(lambda t: t[:, window:], name="calendar")(inputs)
            x = keras.layers.Concatenate(name="with_calendar")([x, extra])
    elif kind == "ann":
        x = keras.layers.Dense(2 * units, activation="relu", name="dense_1")(inputs)
        x = keras.layers.Dense(units, activation="relu", name="dense_2")(x)
    elif kind == "linear":
        x = inputs
    else:
        raise ValueError(f"model: unknown kind {kind!r} (lstm, ann or linear)")
    outputs = keras.layers.Dense(horizon, name="next")(x)
    return keras.Model(inputs, outputs, name=kind)


def fit_linear(model: Any, data: Dataset) -> TrainOutcome:
    """Ordinary least squares (with intercept) on the training split, set as the Dense layer's weights.

    Closed form, so the baseline is the best linear AR on these inputs rather than whatever a
    few epochs of Adam reach, and the same data always gives the same weights.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    x = np.asarray(data.train.inputs, dtype=np.float64)
    y = np.asarray(data.train.y, dtype=np.float64).reshape(len(x), -1)
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    model.get_layer("next").set_weights([coef[:-1].astype(np.float32), coef[-1].astype(np.float32)])
    val_x = np.asarray(data.val.inputs, dtype=np.float64)
    val_y = np.asarray(data.val.y, dtype=np.float64).reshape(len(val_x), -1)
    val_loss = float(np.mean((np.hstack([val_x, np.ones((len(val_x), 1))]) @ coef - val_y) ** 2))
    train_loss = float(np.mean((design @ coef - y) ** 2))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return TrainOutcome(1, 1, val_loss, seconds, cpu_seconds, {"loss": [train_loss], "val_loss": [val_loss]})


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
        data.train.inputs,
        data.train.y,
        validation_data=(data.val.inputs, data.val.y),
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
    out = np.array(model(np.asarray(x, dtype=np.float32), training=False), dtype=np.float32).reshape(len(x), -1)
    return out[:, 0].copy() if out.shape[1] == 1 else out
