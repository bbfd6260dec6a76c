"""Keras models that map a whole window to the next value, and their training loop.

All take input (batch, window) so the server feeds every model the same way. The LSTM is
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
    `hybrid` is that linear AR (layer `linear_ar`, frozen, solved by least squares in
    `train_model`) plus the `ann` network on the same inputs, whose output layer starts at zero: it
    starts as the linear AR and Adam only learns the residual. One graph, so it exports and serves
    like any other package.
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
    elif kind in ("ann", "hybrid"):
        skip = keras.layers.Dense(horizon, name=SKIP_LAYER, trainable=False)(inputs) if kind == "hybrid" else None
        x = keras.layers.Dense(2 * units, activation="relu", name="dense_1")(inputs)
        x = keras.layers.Dense(units, activation="relu", name="dense_2")(x)
        if skip is not None:
            residual = keras.layers.Dense(horizon, kernel_initializer="zeros", name=RESIDUAL_LAYER)(x)
            return keras.Model(inputs, keras.layers.Add(name="next")([skip, residual]), name=kind)
    elif kind == "linear":
        x = inputs
    else:
        raise ValueError(f"model: unknown kind {kind!r} (lstm, ann, linear or hybrid)")
    outputs = keras.layers.Dense(horizon, name="next")(x)
    return keras.Model(inputs, outputs, name=kind)


#: The hybrid's layers: the least-squares skip path and the residual network's output.
SKIP_LAYER, RESIDUAL_LAYER = "linear_ar", "residual"


def _least_squares(model: Any, layer: str, data: Dataset, with_val: bool = False) -> float:
    """Ordinary least squares (with intercept) on the training split (and the validation split:
    `with_val`), set as `layer`'s weights; returns its validation MSE (normalised units)."""
    fit = [data.train, data.val] if with_val else [data.train]
    x = np.vstack([np.asarray(s.inputs, dtype=np.float64) for s in fit])
    y = np.vstack([np.asarray(s.y, dtype=np.float64).reshape(len(s), -1) for s in fit])
    coef, *_ = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)
    model.get_layer(layer).set_weights([coef[:-1].astype(np.float32), coef[-1].astype(np.float32)])
    val_x = np.asarray(data.val.inputs, dtype=np.float64)
    val_y = np.asarray(data.val.y, dtype=np.float64).reshape(len(val_x), -1)
    return float(np.mean((np.hstack([val_x, np.ones((len(val_x), 1))]) @ coef - val_y) ** 2))


def fit_linear(model: Any, data: Dataset) -> TrainOutcome:
    """Ordinary least squares (with intercept) on the training split, set as the Dense layer's weights.

    Closed form, so the baseline is the best linear AR on these inputs rather than whatever a
    few epochs of Adam reach, and the same data always gives the same weights.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    val_loss = _least_squares(model, "next", data)
    train_loss = float(
        np.mean(
            (
                predict(model, data.train.inputs).reshape(len(data.train), -1)
                - np.asarray(data.train.y).reshape(len(data.train), -1)
            )
            ** 2
        )
    )
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
    """Adam on MSE with early stopping on validation loss (best weights restored).

    A hybrid's skip path is solved first on the training split and stays frozen, so Adam fits the
    residual network only, on MAE (least squares already minimises the squared error; the gate
    judges MAE), stopped on validation; if no epoch beats the skip path alone there, the residual
    is zeroed. Then the skip path is solved again on the training and validation windows (a closed
    form needs no early stopping, and that is the data the linear_ar baseline learns from).
    """
    import keras

    hybrid = model.name == "hybrid"
    loss = "mae" if hybrid else "mse"
    skip_val_loss = None
    if hybrid:  # the residual starts at zero: the model is its skip path
        _least_squares(model, SKIP_LAYER, data)
        val_y = np.asarray(data.val.y).reshape(len(data.val), -1)
        skip_val_loss = float(np.mean(np.abs(predict(model, data.val.inputs).reshape(val_y.shape) - val_y)))

    # XLA compiles the unrolled LSTM for minutes on small machines and gains nothing here.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, jit_compile=False)
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
    if skip_val_loss is not None:
        if not val[best] < skip_val_loss:
            emit(f"residual network never beat the linear skip path on validation ({skip_val_loss:.6f}): zeroed")
            layer = model.get_layer(RESIDUAL_LAYER)
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
            best, val = -1, [*val, skip_val_loss]
        _least_squares(model, SKIP_LAYER, data, with_val=True)
    return TrainOutcome(len(losses.get("val_loss", val)), best + 1, val[best], seconds, cpu_seconds, losses)


def predict(model: Any, x: Any) -> Any:
    """Direct call rather than model.predict: no tf.function tracing for a one-off batch."""
    out = np.array(model(np.asarray(x, dtype=np.float32), training=False), dtype=np.float32).reshape(len(x), -1)
    return out[:, 0].copy() if out.shape[1] == 1 else out
