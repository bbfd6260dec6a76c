"""Running a .tflite with LiteRT, the server's runtime, so checks here prove what will serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_interpreter(model: bytes | Path | str):  # -> ai_edge_litert.interpreter.Interpreter
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model, bytes):
        return Interpreter(model_content=model)
    return Interpreter(model_path=str(model))


def batch_signature(model: bytes | Path | str) -> tuple[list[int], list[int]]:
    """Input and output shape signatures (-1 marks a resizable dimension)."""
    interpreter = load_interpreter(model)
    return (
        [int(d) for d in interpreter.get_input_details()[0]["shape_signature"]],
        [int(d) for d in interpreter.get_output_details()[0]["shape_signature"]],
    )


def predict_tflite(model: bytes | Path | str, x: np.ndarray) -> np.ndarray:
    """Predict a whole batch in one invoke, after resizing the batch dimension to len(x): (n,) for
    one-step models, (n, horizon) for day-ahead ones."""
    interpreter = load_interpreter(model)
    x = np.ascontiguousarray(x, dtype=np.float32)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    result = interpreter.get_tensor(out["index"]).reshape(len(x), -1)
    return result[:, 0].copy() if result.shape[1] == 1 else result.copy()  # (n,), or (n, horizon)
