"""No-model echo server: the transport limit (broker + our MQTT layer + the load generator, nothing else).

Answers every request with its own payload, on the request's Response Topic with its
Correlation Data, at QoS 1 — so the load generator counts each as a successful answer. On the
same layer as our server, it is that layer's ceiling: the table's "ours / echo" is the share of it
our server reaches (a ratio, no target).

    MLSERVING_BROKER_PASSWORD=... python -m mlserving_bench.echo --port 1883 --topic ml/bench/requests
"""

from __future__ import annotations

import argparse

from mlserving_bench import responder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlserving_bench.echo",
        description="Echo server for benchmarks: mlserving_common.mqtt, MQTT v5, shared subscription, "
        "answers with the request payload.",
    )
    responder.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return responder.serve(args, lambda payload: payload, "echo")


if __name__ == "__main__":
    raise SystemExit(main())
