"""`python -m mlserving_bench` / `make bench`: the whole benchmark of issue 7 in one bounded run."""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from mlserving_bench import models, report
from mlserving_bench.plan import FULL, QUICK
from mlserving_bench.runner import STEPS, Runner
from mlserving_bench.stack import parse_option
from mlserving_common import logs

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlserving_bench",
        description=(
            "Benchmark ml-serving side by side on this machine, loopback only: the raw model (LiteRT), "
            "a no-model echo server (transport limit and the load generator's ceiling), our server "
            "(saturation, p50/p99 at 25/50/75 %, batched requests, two replicas, a 2x flood), naive "
            "one-message-one-inference servers (paho-mqtt and our MQTT layer), start-up time, RSS and "
            "image size. Prints one table and writes bench/results/<UTC time>.json and .md. See docs/benchmarks.md."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="1.5-2.5 minutes instead of 4-6.5 (shorter loads)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample our server with py-spy under saturation and report what dominates",
    )
    parser.add_argument(
        "--skip",
        default="",
        metavar="STEP[,STEP]",
        help=f"leave steps out (their rows read n/a): {', '.join(s for s in STEPS if s != 'profile')}",
    )
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override our server's config, dotted YAML path, e.g. batching.max_batch=128 (repeatable)",
    )
    parser.add_argument(
        "--server-command",
        metavar="CMD",
        help="start our server with this command instead of `python -m mlserving_server` "
        "(`--config FILE` is appended), e.g. to A/B a patched server",
    )
    parser.add_argument(
        "--registry",
        type=Path,
        metavar="DIR",
        help="filesystem registry with current lstm and ann (default: demo models trained once and "
        f"cached under {models.CACHE_ROOT})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="where the dated .json/.md go (default bench/results)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only, write no results files")
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep broker/server configs, logs and raw profiles (path printed at the end)",
    )
    return parser


def _emit(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parse_skip(text: str) -> frozenset[str]:
    names = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = names - set(STEPS)
    if unknown:
        raise ValueError(f"--skip: unknown step(s) {', '.join(sorted(unknown))}; steps are {', '.join(STEPS)}")
    return names


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """bench/results/<stamp>.json (everything measured) and <stamp>.md (the table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report.file_stamp(results["meta"]["started_utc"])
    json_path, md_path = out_dir / f"{stamp}.json", out_dir / f"{stamp}.md"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    md_path.write_text(report.markdown_document(results))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        skip = _parse_skip(args.skip)
        options = dict(parse_option(text) for text in args.server_option)
    except ValueError as exc:
        print(f"mlserving-bench: {exc}", file=sys.stderr)
        return 2
    if not args.profile:
        skip |= {"profile"}
    logs.configure("warning")  # the load generator logs one info line per run; the table says it all
    logging.getLogger("mlserving_client").setLevel(logging.WARNING)
    started = time.monotonic()
    registry = models.ensure_registry(args.registry, emit=_emit)
    workdir = Path(tempfile.mkdtemp(prefix="mlserving-bench-"))
    plan = QUICK if args.quick else FULL
    try:
        command = shlex.split(args.server_command) if args.server_command else None
        results = Runner(plan, registry, workdir, _emit, options, skip, quick=args.quick, server_command=command).run()
    finally:
        if args.keep_workdir:
            _emit(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    table = report.rows(results)
    print(report.render_meta(results["meta"]))
    print()
    print(report.render_text(table))
    if not args.no_write:
        json_path, md_path = write_results(results, args.out)
        print(f"\nresults: {json_path} and {md_path.name}")
    _emit(f"benchmark took {time.monotonic() - started:.0f} s")
    return 1 if results["errors"] else 0
