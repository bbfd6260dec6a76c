"""Naive reference server: one message -> one inference, the way a tutorial writes it.

The MQTT client's network thread calls on_message; it decodes the JSON with the standard
library, z-scores the window, runs LiteRT at batch 1 (set_tensor / invoke / get_tensor), and
publishes the wire contract's answer (QoS 1, TCP_NODELAY, shared subscription, the request
acknowledged once answered). No batching, no worker thread, no metrics. Two MQTT layers under
the same model code, so the table can tell apart what each part of our server buys:

- `--mqtt paho` (default): paho-mqtt's public API, the loop a user hand-rolls from the tutorial
  (mqtt_layers.serve_paho, the paho candidate of the layer comparison, with the model call in
  it). The baseline of the target "ours / naive >= 3x": what our whole server buys.
- `--mqtt layer`: our own layer `mlserving_common.mqtt` (responder.py, as echo.py). Against the
  paho row: what the layer buys; against ours: what batching and the rest of the server buy.

    MLSERVING_BROKER_PASSWORD=... python -m mlserving_bench.naive --port 1883 --topic ml/bench/requests \\
        --package /path/to/registry/lstm/v1 [--mqtt layer]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mlserving_bench import mqtt_layers, responder
from mlserving_common.package import MODEL_FILE, read_metadata

#: --mqtt choices: which MQTT client carries the requests.
MQTT_LAYERS = ("paho", "layer")


class NaiveModel:
    """One LiteRT interpreter at batch 1 and the package's normalisation."""

    def __init__(self, package: Path, tenant: str) -> None:
        from ai_edge_litert.interpreter import Interpreter

        meta = read_metadata(package)
        self.name, self.version, self.tenant = meta.name, meta.version, tenant
        self.window = meta.window
        self.mean, self.std = meta.normalization.mean, meta.normalization.std
        self.shape = [1, *meta.input.shape[1:]]
        self.interpreter = Interpreter(model_path=str(package / MODEL_FILE), num_threads=1)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.interpreter.resize_tensor_input(self.input, self.shape)
        self.interpreter.allocate_tensors()

    def predict(self, series: list[float]) -> float:
        x = (np.array(series, dtype=np.float32).reshape(self.shape) - self.mean) / self.std
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output)
        return float(y.reshape(-1)[0]) * self.std + self.mean

    def answer(self, payload: bytes) -> bytes:
        request_id = None
        try:
            body = json.loads(payload)
            request_id = body.get("id")
            series = body["series"]
            if len(series) != self.window:
                raise ValueError(f"series has {len(series)} values, model needs {self.window}")
            prediction = self.predict(series)
        except Exception as exc:  # noqa: BLE001 - a tutorial's catch-all: every request still gets an answer
            error = {"code": "invalid_request", "message": str(exc)}
            return json.dumps({"v": 1, "id": request_id, "error": error}).encode()
        return json.dumps(
            {
                "v": 1,
                "id": request_id,
                "tenant": self.tenant,
                "model": self.name,
                "version": self.version,
                "prediction": prediction,
            }
        ).encode()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlserving_bench.naive",
        description="Naive one-message-one-inference server for benchmarks (paho-mqtt or our MQTT layer, "
        "json, LiteRT at batch 1).",
    )
    responder.add_arguments(parser)
    parser.add_argument(
        "--mqtt",
        choices=MQTT_LAYERS,
        default="paho",
        help="paho: paho-mqtt's public API, the tutorial's way (default); layer: mlserving_common.mqtt",
    )
    parser.add_argument(
        "--package", type=Path, required=True, help="model package directory (model.tflite + metadata.json)"
    )
    parser.add_argument("--tenant", default="bench", help="tenant name put into answers")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = NaiveModel(args.package, args.tenant)
    if args.mqtt == "paho":
        mqtt_layers.serve_paho(mqtt_layers.Setup.from_args(args, "naive-paho"), model.answer)
        return 0
    return responder.serve(args, model.answer, "naive-layer")


if __name__ == "__main__":
    raise SystemExit(main())
