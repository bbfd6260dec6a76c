"""`mlserving-client`: predict once, replay a CSV series, or generate load.

Exit codes: 0 success; 1 the service answered with an error or not at all; 2 bad usage or
configuration; 3 cannot connect to the broker.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from mlserving_client import config as config_mod
from mlserving_client.client import Client, PredictionError
from mlserving_client.load import ENGINES, MAX_DURATION_S, LoadSpec, TenantTarget, run_load
from mlserving_client.replay import ReplayError, ReplayStep, plot, read_series, replay
from mlserving_common import logs, protocol

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3


class UsageError(ValueError):
    """Bad arguments that argparse itself cannot see (combinations, file contents)."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _duration(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"{text} s is too long: at most {MAX_DURATION_S:g} s")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _connection_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("broker connection (flags override MLSERVING_CLIENT_* variables)")
    group.add_argument("--host", help="broker host (env MLSERVING_CLIENT_HOST; default 127.0.0.1)")
    group.add_argument("--port", type=int, help="broker port (env MLSERVING_CLIENT_PORT; default 1883)")
    group.add_argument("--username", help="broker user (env MLSERVING_CLIENT_USERNAME; default: the tenant name)")
    secret = group.add_mutually_exclusive_group()
    secret.add_argument("--password", help="broker password (prefer --password-file or MLSERVING_CLIENT_PASSWORD)")
    secret.add_argument("--password-file", help="file holding the broker password")
    group.add_argument(
        "--prefix", help=f"topic prefix (env MLSERVING_CLIENT_PREFIX; default {protocol.DEFAULT_PREFIX})"
    )
    group.add_argument(
        "--tls-ca", help="CA certificate: connect with TLS and verify the broker (env MLSERVING_CLIENT_TLS_CA)"
    )
    group.add_argument(
        "--qos", type=int, choices=(0, 1), help="MQTT QoS of requests and answers (env MLSERVING_CLIENT_QOS; default 1)"
    )
    group.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="JSON log lines on stderr at this level (default warning)",
    )
    return parent


def _topic_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--request-topic", help="explicit request topic (tenants configured with fixed queues)")
    parser.add_argument("--response-topic", help="explicit response namespace; answers arrive on <it>/<client id>")


def _retry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=_positive_float, default=5.0, help="seconds to wait per attempt (default 5)")
    parser.add_argument(
        "--attempts", type=_positive_int, default=3, help="attempts per request, resent with the same id (default 3)"
    )


def build_parser() -> argparse.ArgumentParser:
    parent = _connection_parent()
    parser = argparse.ArgumentParser(
        prog="mlserving-client",
        description="Client for the ml-serving forecasting service (MQTT v5).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        parents=[parent],
        help="forecast one series and print the JSON answer",
        description="Send one request and print the server's JSON answer on stdout.",
    )
    p.add_argument("series", nargs="*", type=float, metavar="VALUE", help="raw readings, oldest first")
    p.add_argument("--series-json", help="series as JSON: [1.0, 2.0, ...], or [[...], [...]] for a batched request")
    p.add_argument("--tenant", help="tenant (env MLSERVING_CLIENT_TENANT)")
    p.add_argument("--model", help="model name (default: the tenant's default model)")
    p.add_argument("--series-id", help="series id passed to the server")
    p.add_argument(
        "--time",
        type=float,
        help="unix seconds of the series' last reading (models with calendar inputs need it; single series only)",
    )
    p.add_argument("--horizon", type=_positive_int, help="forecast steps wanted from a day-ahead model")
    _retry_args(p)
    _topic_args(p)

    r = sub.add_parser(
        "replay",
        parents=[parent],
        help="stream a CSV series, print forecasts beside actuals",
        description="Send each window of the last --window readings of a CSV series and print "
        "the forecast beside the actual next reading and a running MAE.",
    )
    r.add_argument("file", help="CSV with columns station_id, parameter_id, reading_time, value")
    r.add_argument("--series", help="station_id/parameter_id to replay (default: the first, as the trainer picks)")
    r.add_argument(
        "--window",
        type=_positive_int,
        default=protocol.LEGACY_WINDOW,
        help=f"readings per request (default {protocol.LEGACY_WINDOW})",
    )
    r.add_argument("--rate", type=_positive_float, help="requests per second (default: as fast as answers come)")
    r.add_argument("--limit", type=_positive_int, help="stop after this many forecasts")
    r.add_argument("--tenant", help="tenant (env MLSERVING_CLIENT_TENANT)")
    r.add_argument("--model", help="model name (default: the tenant's default model)")
    r.add_argument("--plot", metavar="PNG", help="save forecasts vs actuals to this image")
    r.add_argument("--summary-json", metavar="FILE", help="write the summary (MAE, RMSE, versions, latency) as JSON")
    r.add_argument("--quiet", action="store_true", help="print only the summary")
    _retry_args(r)
    _topic_args(r)

    load = sub.add_parser(
        "load",
        parents=[parent],
        help="generate load and report throughput and latency",
        description="Open loop (--rate) or closed loop (--concurrency) load on one or more "
        "tenants; prints sent/answered/errors/lost/duplicates, throughput and "
        "p50/p95/p99/max latency.",
    )
    load.add_argument("--tenant", action="append", default=[], help="tenant to load (repeat for several)")
    load.add_argument(
        "--auth",
        action="append",
        default=[],
        metavar="TENANT:PASSWORD",
        help="credentials of one tenant: TENANT:PASSWORD (user = tenant) or TENANT=USER:PASSWORD; "
        "tenants without --auth use --username/--password",
    )
    mode = load.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=_positive_float, help="open loop: requests per second, over all tenants")
    mode.add_argument(
        "--concurrency", type=_positive_int, help="closed loop: requests outstanding, split over the tenants"
    )
    load.add_argument("--duration", type=_duration, help=f"seconds to send (at most {MAX_DURATION_S:g})")
    load.add_argument("--count", type=_positive_int, help="requests to send in total")
    load.add_argument("--batch", type=_positive_int, default=1, help="series per message (default 1)")
    load.add_argument(
        "--window",
        type=_positive_int,
        default=protocol.LEGACY_WINDOW,
        help=f"readings per series (default {protocol.LEGACY_WINDOW})",
    )
    load.add_argument("--model", help="model name (default: each tenant's default model)")
    load.add_argument(
        "--grace",
        type=_non_negative_float,
        default=5.0,
        help="seconds to wait for answers after the last send; still unanswered = lost (default 5)",
    )
    load.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=5.0,
        help="closed loop: a request unanswered this long frees its slot (default 5)",
    )
    load.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="lean: a broken connection fails its tenant and its unanswered requests count as lost; "
        "reconnect: reconnect with the library's backoff; auto = lean (default auto)",
    )
    load.add_argument(
        "--loopback",
        action="store_true",
        help="publish requests to our own reply topic: the broker echoes them, no server needed; "
        "measures the generator's own ceiling (needs write access to the response topic)",
    )
    load.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _connection(args: argparse.Namespace, tenant: str | None = None) -> config_mod.ConnectionConfig:
    flags = {
        k: getattr(args, k, None)
        for k in ("host", "port", "username", "password", "password_file", "prefix", "tls_ca", "qos")
    }
    flags["tenant"] = tenant if tenant is not None else getattr(args, "tenant", None)
    return config_mod.resolve(flags)


def _client(args: argparse.Namespace) -> Client:
    cfg = _connection(args)
    if cfg.tenant is None:
        raise UsageError("tenant: give --tenant or set MLSERVING_CLIENT_TENANT")
    return Client(
        cfg.host,
        cfg.port,
        cfg.effective_username,
        cfg.password,
        cfg.tenant,
        prefix=cfg.prefix,
        request_topic=args.request_topic,
        response_topic=args.response_topic,
        tls_ca=cfg.tls_ca,
        qos=cfg.qos,
        timeout=args.timeout,
        attempts=args.attempts,
    )


def _series_args(args: argparse.Namespace) -> tuple[list[float] | None, list[list[float]] | None]:
    if args.series and args.series_json:
        raise UsageError("series: give values or --series-json, not both")
    if args.series_json:
        try:
            raw = orjson.loads(args.series_json)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"--series-json: not valid JSON ({exc})") from None
        if isinstance(raw, list) and raw and all(isinstance(s, list) for s in raw):
            return None, raw
        if isinstance(raw, list) and raw:
            return raw, None
        raise UsageError("--series-json: must be a non-empty list of numbers or of lists of numbers")
    if not args.series:
        raise UsageError("series: give the readings (predict 1.0 2.0 ...) or --series-json")
    return args.series, None


def cmd_predict(args: argparse.Namespace) -> int:
    series, instances = _series_args(args)
    with _client(args) as client:
        future = client.submit(
            series,
            instances=instances,
            model=args.model,
            series_id=args.series_id,
            horizon=args.horizon,
            time_s=args.time,
        )
        try:
            answer = future.result()
        except PredictionError as exc:
            _print_json({"id": exc.request_id, "error": {"code": exc.code, "message": exc.message}})
            return EXIT_FAILED
        except TimeoutError as exc:
            print(f"mlserving-client: {exc}", file=sys.stderr)
            return EXIT_FAILED
    _print_json(answer.raw)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    series = read_series(args.file, args.series)
    steps: list[ReplayStep] = []

    def show(step: ReplayStep) -> None:
        steps.append(step)
        if args.quiet:
            return
        if step.forecast is None:
            print(f"{step.time}  actual {step.actual:10.4f}  error: {step.error}", flush=True)
        else:
            print(
                f"{step.time}  forecast {step.forecast:10.4f}  actual {step.actual:10.4f}  "
                f"|err| {abs(step.forecast - step.actual):8.4f}  MAE {step.mae:8.4f}  ({step.version})",
                flush=True,
            )

    with _client(args) as client:
        print(f"replaying {series.label}: {len(series.values)} readings, window {args.window}", file=sys.stderr)
        summary = replay(client, series, args.window, rate=args.rate, limit=args.limit, model=args.model, on_step=show)
    result = summary.to_dict()
    mae = f"{summary.mae:.4f}" if summary.mae is not None else "-"
    rmse = f"{summary.rmse:.4f}" if summary.rmse is not None else "-"
    print(
        f"summary: {summary.answered}/{summary.steps} forecasts, MAE {mae}, RMSE {rmse}, "
        f"errors {dict(summary.errors) or 0}, versions {dict(summary.versions)}"
    )
    if args.summary_json:
        with open(args.summary_json, "wb") as handle:
            handle.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    if args.plot:
        plot(steps, series.label, args.plot)
        print(f"plot saved to {args.plot}", file=sys.stderr)
    return 0 if not summary.errors else EXIT_FAILED


def parse_auth(entries: Sequence[str]) -> dict[str, tuple[str, str]]:
    """--auth values -> {tenant: (username, password)}."""
    auth: dict[str, tuple[str, str]] = {}
    for entry in entries:
        who, sep, password = entry.partition(":")
        if not sep or not who:
            raise UsageError(f"--auth: {entry!r} must be TENANT:PASSWORD or TENANT=USER:PASSWORD")
        tenant, eq, user = who.partition("=")
        if eq and not (tenant and user):
            raise UsageError(f"--auth: {entry!r} must be TENANT=USER:PASSWORD")
        auth[tenant] = (user if eq else tenant, password)
    return auth


def load_spec(args: argparse.Namespace) -> LoadSpec:
    """Turn `load` arguments into a validated LoadSpec (public so tests can check the mapping)."""
    auth = parse_auth(args.auth)
    tenants = list(dict.fromkeys(args.tenant)) or list(auth)
    if not tenants:
        env_tenant = _connection(args).tenant
        tenants = [env_tenant] if env_tenant else []
    if not tenants:
        raise UsageError("tenant: give --tenant (repeatable) or --auth TENANT:PASSWORD")
    unknown = sorted(set(auth) - set(tenants))
    if unknown:
        raise UsageError(f"--auth: tenant(s) {', '.join(unknown)} not among --tenant {', '.join(tenants)}")
    if args.duration is None and args.count is None:
        raise UsageError("duration: give --duration SECONDS and/or --count N")
    base = _connection(args, tenant=tenants[0])
    targets = []
    for tenant in tenants:
        username, password = auth.get(tenant, (args.username or tenant, base.password))
        targets.append(TenantTarget(tenant, username, password))
    spec = LoadSpec(
        host=base.host,
        port=base.port,
        targets=tuple(targets),
        rate=args.rate,
        concurrency=args.concurrency,
        duration=args.duration,
        count=args.count,
        batch=args.batch,
        window=args.window,
        model=args.model,
        qos=base.qos,
        prefix=base.prefix,
        tls_ca=base.tls_ca,
        grace=args.grace,
        request_timeout=args.request_timeout,
        engine=args.engine,
        loopback=args.loopback,
    )
    try:
        spec.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return spec


def cmd_load(args: argparse.Namespace) -> int:
    spec = load_spec(args)
    result = run_load(spec)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.format_text())
    return 0


def _print_json(body: Any) -> None:
    sys.stdout.write(orjson.dumps(body).decode() + "\n")
    sys.stdout.flush()


COMMANDS = {"predict": cmd_predict, "replay": cmd_replay, "load": cmd_load}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, config_mod.ConfigError, ReplayError) as exc:
        parser.exit(EXIT_USAGE, f"mlserving-client {args.command}: error: {exc}\n")
    except ConnectionError as exc:
        print(f"mlserving-client {args.command}: cannot connect: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
