"""`mlserving-server`: serve forecasting models to MQTT tenants (see docs/server.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import orjson

from mlserving_common import logs
from mlserving_server.config import ConfigError, load_config, summary

DEFAULT_CONFIG = "/etc/ml-serving/server.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlserving-server",
        description="Serve time-series forecasting TFLite models to tenants over MQTT (protocol: docs/protocol.md).",
        epilog=(
            "Environment overrides: MLSERVING_BROKER_HOST, MLSERVING_BROKER_PORT, MLSERVING_BROKER_USERNAME, "
            "MLSERVING_BROKER_PASSWORD, MLSERVING_HTTP_PORT, MLSERVING_REGISTRY_PATH, MLSERVING_LOG_LEVEL, "
            "MLSERVING_CONFIG (config file path)."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"YAML config file (default: $MLSERVING_CONFIG or {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config (file + environment), print the effective settings without secrets, and exit",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.config or os.environ.get("MLSERVING_CONFIG") or DEFAULT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as exc:
        logs.configure()  # a JSON line like every other: log shippers need no second format
        logs.event(logging.getLogger("mlserving.server"), "invalid configuration", logging.ERROR, error=str(exc))
        return 2
    if args.check_config:
        sys.stdout.write(orjson.dumps(summary(config), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    logs.configure(config.log_level)
    # Imported late: --help and --check-config need neither LiteRT nor the MQTT connection.
    from mlserving_server.app import Server

    return Server(config).run()


if __name__ == "__main__":
    raise SystemExit(main())
