"""From a run's results (a JSON-able dict) to the one table: figures, ratios, targets with verdicts.

Pure functions only, so they are unit-tested without running anything. A step that failed or
was skipped leaves its section out of the results; its rows then read "n/a", never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PASS, FAIL, NA = "PASS", "FAIL", "n/a"
#: Cores a fair two-replica test needs: one per replica, one for the broker, one for the load generator.
CORES_FOR_REPLICAS = 4


@dataclass(frozen=True)
class Row:
    step: str
    measurement: str
    result: str
    target: str = ""
    verdict: str = ""


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def fmt_rate(value: float | None, unit: str = "/s") -> str:
    return NA if value is None else f"{value:,.0f}{unit}"


def fmt_ratio(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}×"


def fmt_ms(value: float | None) -> str:
    return NA if value is None else f"{value:.2f} ms"


def fmt_us(value: float | None) -> str:
    if value is None:
        return NA
    return f"{value:.3f} µs" if value < 1 else f"{value:.1f} µs"


def fmt_percent(value: float | None) -> str:
    return NA if value is None else f"{value:.1f} %"


def fmt_mb(value: float | None) -> str:
    return NA if value is None else f"{value:.0f} MB"


def fmt_seconds(value: float | None) -> str:
    return NA if value is None else f"{value:.2f} s"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def verdict(value: float | None, threshold: float, higher_is_better: bool = True) -> str:
    if value is None:
        return NA
    ok = value >= threshold if higher_is_better else value <= threshold
    return PASS if ok else FAIL


# ---------------------------------------------------------------------------------------------
# Reading results
# ---------------------------------------------------------------------------------------------


def _get(results: dict[str, Any], *path: Any) -> Any:
    node: Any = results
    for key in path:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        else:
            return None
        if node is None:
            return None
    return node


def throughput(results: dict[str, Any], step: str) -> float | None:
    return _get(results, step, "load", "throughput")


def replicas_ratio(results: dict[str, Any]) -> float | None:
    """Two replicas / one, against the one-replica run just before (else the saturation step)."""
    single = _get(results, "replicas2", "single_throughput") or throughput(results, "ours")
    return ratio(throughput(results, "replicas2"), single)


def latency_at(results: dict[str, Any], fraction: float) -> dict[str, Any] | None:
    for entry in results.get("latency") or []:
        if abs(entry.get("fraction", -1) - fraction) < 1e-9:
            return entry
    return None


def flood_at(results: dict[str, Any], factor: float) -> dict[str, Any] | None:
    """The flood entry run at `factor` x saturation (results["floods"]), if any."""
    for entry in results.get("floods") or []:
        if abs(entry.get("factor", -1) - factor) < 1e-9:
            return entry
    return None


def best_batched(results: dict[str, Any]) -> dict[str, Any] | None:
    entries = [e for e in results.get("batched") or [] if _get(e, "load", "forecasts_per_second") is not None]
    return max(entries, key=lambda e: e["load"]["forecasts_per_second"], default=None)


def model_share(results: dict[str, Any]) -> float | None:
    """Fraction of one core the model needs at our saturation: µs/sample at the observed batch × req/s."""
    us = _get(results, "ours", "server", "model_us_per_sample")
    rate = throughput(results, "ours")
    if us is None or rate is None:
        return None
    return us * rate / 1e6


def model_share_of_cpu(results: dict[str, Any]) -> float | None:
    """Fraction of our server's CPU per request that the model accounts for."""
    return ratio(
        _get(results, "ours", "server", "model_us_per_sample"), _get(results, "ours", "server_cpu_us_per_request")
    )


def cpu_cost(results: dict[str, Any], step: str) -> float | None:
    """Server CPU µs per answer (median over rounds when there were several)."""
    return _get(results, step, "median_server_cpu_us_per_request") or _get(results, step, "server_cpu_us_per_request")


def _rounds_note(results: dict[str, Any], step: str) -> str:
    rounds = _get(results, step, "rounds") or []
    if len(rounds) < 2:
        return ""
    return "best of " + " / ".join(f"{r:,.0f}" for r in rounds)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# Targets (issue 7)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    value: float | None
    shown: str
    verdict: str


#: What each baseline runs on, as the table names it: "naive" is the tutorial's server on paho-mqtt
#: (the target's baseline), "naive_layer" the same program on our layer, "echo" no model on our layer.
NAIVE_PAHO = "naive on paho-mqtt"
NAIVE_LAYER = "naive on mlserving_common.mqtt"
ECHO_LAYER = "echo on mlserving_common.mqtt"
#: ours / echo is no target: the echo stands on the same layer, so this is how much of the layer's ceiling we reach.
ECHO_NOTE = "share of the layer's ceiling (no-model echo, same layer) the server reaches; no target"


def _lost_silently(factor: int, lost: int | None) -> Target:
    """The flood targets: every message a flood drops must be refused or answered, none lost unseen."""
    return Target(
        f"flood at {factor}× saturation: lost silently",
        "0",
        lost,
        NA if lost is None else str(lost),
        verdict(lost, 0, higher_is_better=False),
    )


def targets(results: dict[str, Any]) -> list[Target]:
    vs_naive = ratio(throughput(results, "ours"), throughput(results, "naive"))
    p99 = _get(latency_at(results, 0.5) or {}, "load", "latency", "p99_ms")
    batched = _get(best_batched(results) or {}, "load", "forecasts_per_second")
    replicas = replicas_ratio(results)
    cores = _get(results, "meta", "cores")
    replicas_verdict = verdict(replicas, 1.6)
    replicas_goal = "≥ 1.6× one (where cores allow)"
    if cores is not None and cores < CORES_FOR_REPLICAS:
        replicas_verdict = NA  # two replicas, the broker and the generator share fewer cores than they need
        replicas_goal += f"; {cores} cores < {CORES_FOR_REPLICAS} needed"
    flood = _get(results, "flood", "load")
    lost = None if flood is None else flood.get("lost")
    flood4 = flood_at(results, 4.0)
    lost4 = _get(flood4 or {}, "load", "lost")
    peak4 = _get(flood4 or {}, "rss_peak_mb")
    limit4 = _get(flood4 or {}, "limit_mb")
    share4 = None if peak4 is None or not limit4 else 100.0 * peak4 / limit4
    startup = _get(results, "footprint", "startup_seconds", 0)
    rss = _get(results, "footprint", "rss_mb")
    image = _get(results, "footprint", "image_mb")
    return [
        Target(f"ours / {NAIVE_PAHO}", "≥ 3×", vs_naive, fmt_ratio(vs_naive), verdict(vs_naive, 3.0)),
        Target("p99 at 50 % of saturation", "≤ 5 ms", p99, fmt_ms(p99), verdict(p99, 5.0, higher_is_better=False)),
        Target("batched forecasts/s per replica", "≥ 100,000/s", batched, fmt_rate(batched), verdict(batched, 100_000)),
        Target("2 replicas / 1", replicas_goal, replicas, fmt_ratio(replicas), replicas_verdict),
        _lost_silently(2, lost),
        _lost_silently(4, lost4),
        Target(
            "server peak RSS in the 4× flood, % of chart limit",
            "< 60 %",
            share4,
            NA if share4 is None else f"{share4:.0f} %",
            verdict(share4, 60.0, higher_is_better=False),
        ),
        Target("start to ready", "≤ 2 s", startup, fmt_seconds(startup), verdict(startup, 2.0, higher_is_better=False)),
        Target("server RSS after load", "≤ 150 MB", rss, fmt_mb(rss), verdict(rss, 150.0, higher_is_better=False)),
        Target("server image", "≤ 250 MB", image, fmt_mb(image), verdict(image, 250.0, higher_is_better=False)),
    ]


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def _load_note(load: dict[str, Any] | None) -> str:
    if not load:
        return ""
    parts = []
    if load.get("concurrency"):
        parts.append(f"closed loop, {load['concurrency']} outstanding")
    elif load.get("target_rate"):
        parts.append(f"open loop at {load['target_rate']:,.0f}/s")
    errors, lost = load.get("error_total", 0), load.get("lost", 0)
    if errors or lost:
        parts.append(f"{errors} errors, {lost} lost")
    return ", ".join(parts)


def _cpu_note(entry: dict[str, Any] | None) -> str:
    cpu = (entry or {}).get("cpu") or {}
    return ", ".join(f"{name} {value:.0f} %" for name, value in cpu.items())


def rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the table, in the order of the issue's steps."""
    out: list[Row] = []
    for name in ("lstm", "ann"):
        sweep = _get(results, "model", name)
        if sweep is None:
            out.append(Row("1 model", f"{name}: LiteRT per sample", NA))
            continue
        out.append(Row("1 model", f"{name}: µs per call at batch 1", fmt_us(sweep.get("batch1_us"))))
        out.append(
            Row(
                "1 model",
                f"{name}: µs per sample at best batch ({sweep.get('best_batch')})",
                fmt_us(sweep.get("best_us_per_sample")),
            )
        )

    echo = results.get("echo")
    echo_load = _get(results, "echo", "load")
    out.append(
        Row(
            "2 transport",
            f"{ECHO_LAYER} (no model), req/s",
            fmt_rate(throughput(results, "echo")),
            _join(_load_note(echo_load), _rounds_note(results, "echo")),
        )
    )
    out.append(Row("2 transport", "CPU at echo saturation (% of one core)", _cpu_note(echo) or NA))
    out.append(
        Row(
            "2 transport",
            "echo CPU per request",
            fmt_us(cpu_cost(results, "echo")),
            _join(f"broker {fmt_us(_get(results, 'echo', 'broker_cpu_us_per_request'))}"),
        )
    )
    gen_us = _get(echo_load or {}, "client_cpu_us_per_request")
    out.append(
        Row(
            "2 transport",
            "load generator ceiling (1 core ÷ its CPU µs/request)",
            fmt_rate(1e6 / gen_us if gen_us else None),
            f"{gen_us:.0f} µs CPU/request" if gen_us else "",
        )
    )

    ours = results.get("ours")
    out.append(
        Row(
            "3 ours ×1",
            "saturation, req/s",
            fmt_rate(throughput(results, "ours")),
            _join(_load_note(_get(results, "ours", "load")), _rounds_note(results, "ours")),
        )
    )
    out.append(Row("3 ours ×1", "CPU at saturation (% of one core)", _cpu_note(ours) or NA))
    out.append(
        Row(
            "3 ours ×1",
            "server CPU per request",
            fmt_us(cpu_cost(results, "ours")),
            _join(f"broker {fmt_us(_get(results, 'ours', 'broker_cpu_us_per_request'))}"),
        )
    )
    mean_batch = _get(results, "ours", "server", "mean_batch")
    out.append(
        Row(
            "3 ours ×1",
            "mean batch at saturation (series per inference)",
            NA if mean_batch is None else f"{mean_batch:.1f}",
        )
    )
    basis = _get(results, "ours", "rate_basis")
    for entry in results.get("latency") or []:
        lat = _get(entry, "load", "latency") or {}
        of = f" of the median round's {basis:,.0f}/s" if basis else ""
        out.append(
            Row(
                "3 ours ×1",
                f"p50 / p99 at {entry['fraction']:.0%}{of} ({entry.get('rate', 0):,.0f}/s)",
                f"{fmt_ms(lat.get('p50_ms'))} / {fmt_ms(lat.get('p99_ms'))}",
                _load_note(entry.get("load")),
            )
        )

    for entry in results.get("batched") or []:
        out.append(
            Row(
                "4 batched",
                f"{entry['batch']} series per message, forecasts/s",
                fmt_rate(_get(entry, "load", "forecasts_per_second")),
                _load_note(entry.get("load")),
            )
        )

    out.append(
        Row(
            "5 replicas",
            "2 servers, one shared subscription, req/s",
            fmt_rate(throughput(results, "replicas2")),
            _cpu_note(results.get("replicas2")),
        )
    )

    for step, name, how in (
        ("naive", NAIVE_PAHO, "the tutorial's way, naive.py --mqtt paho"),
        ("naive_layer", NAIVE_LAYER, "naive.py --mqtt layer"),
    ):
        out.append(
            Row(
                "6 naive",
                f"{name}: one message → one inference ({how}), req/s",
                fmt_rate(throughput(results, step)),
                _join(_cpu_note(results.get(step)), _rounds_note(results, step)),
            )
        )
        out.append(Row("6 naive", f"{name}: CPU per request", fmt_us(cpu_cost(results, step))))

    floods = results.get("floods") or ([{"factor": 2.0, **results["flood"]}] if results.get("flood") else [])
    for entry in floods:
        flood = entry.get("load") or {}
        rejected = ", ".join(f"{k} {v}" for k, v in sorted((flood.get("errors") or {}).items())) or "0"
        peak, limit = entry.get("rss_peak_mb"), entry.get("limit_mb")
        memory = (
            f"server peak RSS {peak:.0f} MiB = {100.0 * peak / limit:.0f} % of the chart's {limit:.0f} MiB limit"
            if peak is not None and limit
            else ""
        )
        out.append(
            Row(
                "7 flood",
                f"{entry.get('factor', 2.0):g}× saturation ({flood.get('target_rate') or 0:,.0f}/s "
                f"target, {flood.get('offered_rate') or 0:,.0f}/s sent)",
                f"sent {flood.get('sent')}: answered {flood.get('answered')}, rejected {rejected}, "
                f"lost {flood.get('lost')}",
                memory,
            )
        )
    if not floods:
        out.append(Row("7 flood", "2× and 4× saturation", NA))

    footprint = results.get("footprint") or {}
    starts = footprint.get("startup_seconds") or []
    out.append(
        Row(
            "8 footprint",
            "server start → /readyz 200",
            fmt_seconds(starts[0] if starts else None),
            ("all starts: " + ", ".join(f"{s:.2f}" for s in starts)) if len(starts) > 1 else "",
        )
    )
    out.append(
        Row(
            "8 footprint",
            "server RSS after load",
            fmt_mb(footprint.get("rss_mb")),
            f"peak {fmt_mb(footprint.get('rss_peak_mb'))}" if footprint.get("rss_peak_mb") else "",
        )
    )
    out.append(Row("8 footprint", "server image", fmt_mb(footprint.get("image_mb")), footprint.get("image_source", "")))

    out += layer_rows(results)

    ours_rate = throughput(results, "ours")
    share = model_share(results)
    of_cpu = model_share_of_cpu(results)
    measured = _get(results, "ours", "server", "inference_share")
    naive, naive_layer = throughput(results, "naive"), throughput(results, "naive_layer")
    out.append(
        Row(
            "ratios",
            f"ours / {NAIVE_PAHO}",
            fmt_ratio(ratio(ours_rate, naive)),
            "what the whole server buys over the tutorial's",
        )
    )
    out.append(
        Row(
            "ratios",
            f"{NAIVE_LAYER} / {NAIVE_PAHO}",
            fmt_ratio(ratio(naive_layer, naive)),
            "what the MQTT layer buys (same program otherwise)",
        )
    )
    out.append(
        Row(
            "ratios",
            f"ours / {NAIVE_LAYER}",
            fmt_ratio(ratio(ours_rate, naive_layer)),
            "what batching and the rest of the server buy (same layer)",
        )
    )
    out.append(
        Row("ratios", f"ours / {ECHO_LAYER}", fmt_ratio(ratio(ours_rate, throughput(results, "echo"))), ECHO_NOTE)
    )
    for step, name, note in (
        ("naive", NAIVE_PAHO, "robust to a busy machine: CPU time used, not wall time"),
        ("naive_layer", NAIVE_LAYER, ""),
        ("echo", ECHO_LAYER, ""),
    ):
        out.append(
            Row(
                "ratios",
                f"CPU per request: {name} / ours",
                fmt_ratio(ratio(cpu_cost(results, step), cpu_cost(results, "ours"))),
                note,
            )
        )
    single = _get(results, "replicas2", "single_throughput")
    out.append(
        Row(
            "ratios",
            "2 replicas / 1",
            fmt_ratio(replicas_ratio(results)),
            f"vs one replica measured just before: {fmt_rate(single)}" if single else "",
        )
    )
    best = best_batched(results)
    out.append(
        Row(
            "ratios",
            "batched forecasts/s ÷ single-series req/s",
            fmt_ratio(ratio(_get(best or {}, "load", "forecasts_per_second"), ours_rate)),
        )
    )
    out.append(
        Row(
            "ratios",
            "model share of time at saturation (sweep µs/sample at mean batch × req/s)",
            fmt_percent(None if share is None else 100 * share),
            _join(
                "" if of_cpu is None else f"{100 * of_cpu:.1f} % of the server's CPU per request",
                ""
                if measured is None
                else f"server's inference timer (predict incl. numpy): {100 * measured:.1f} % of wall time",
            ),
        )
    )
    for target in targets(results):
        out.append(Row("targets", target.name, target.shown, target.goal, target.verdict))
    return out


LAYERS_STEP = "9 mqtt layer"


def layer_rows(results: dict[str, Any]) -> list[Row]:
    """The MQTT library comparison (mqtt_layers.py), two rows per candidate: CPU per answer (the
    decision metric, also relative to the cheapest), then saturation and latency at the fixed rate."""
    section = results.get("layers")
    if not section:
        return [Row(LAYERS_STEP, "echo on each candidate MQTT library", NA)]
    rate = section["plan"]["rate"]
    candidates: dict[str, dict[str, Any]] = section["candidates"]
    cheapest = min((c["cpu_us_per_request"] for c in candidates.values() if c.get("cpu_us_per_request")), default=None)
    out: list[Row] = []
    for name, entry in candidates.items():
        label, at_rate, cost = entry.get("label", name), entry.get("at_rate") or {}, entry.get("cpu_us_per_request")
        broker, error = entry.get("broker_cpu_us_per_request"), entry.get("error", "")
        out.append(
            Row(
                LAYERS_STEP,
                f"{label}: CPU per answer at saturation | at {rate:,.0f}/s",
                f"{fmt_us(cost)} | {fmt_us(at_rate.get('cpu_us_per_request'))}",
                _join(
                    f"{cost / cheapest:.2f}× the cheapest" if cost and cheapest else "",
                    f"broker {fmt_us(broker)}" if broker else "",
                    error.splitlines()[0] if error else "",
                ),
            )
        )
        measured = [*(entry.get("rounds") or []), *([at_rate] if at_rate else [])]
        lost, errors = sum(m["lost"] for m in measured), sum(m["errors"] for m in measured)
        rounds = [r["throughput"] for r in entry.get("rounds") or []]
        out.append(
            Row(
                LAYERS_STEP,
                f"{label}: saturation | p50 / p99 at {rate:,.0f}/s",
                f"{fmt_rate(entry.get('saturation'))} | {fmt_ms(at_rate.get('p50_ms'))} / "
                f"{fmt_ms(at_rate.get('p99_ms'))}",
                _join(
                    "best of " + " / ".join(f"{r:,.0f}" for r in rounds) if len(rounds) > 1 else "",
                    f"{lost} lost, {errors} errors" if lost or errors else "",
                    f"RSS {entry['rss_mb']:.0f} MB" if entry.get("rss_mb") else "",
                    f"ready in {entry['ready_seconds']:.2f} s" if entry.get("ready_seconds") else "",
                ),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

HEADER = ("step", "measurement", "result", "note / target", "verdict")


def _cells(row: Row) -> tuple[str, ...]:
    return (row.step, row.measurement, row.result, row.target, row.verdict)


def render_text(table: Sequence[Row]) -> str:
    """Aligned plain-text table for the terminal."""
    cells = [HEADER, *(_cells(r) for r in table)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]

    def line(c: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEADER), rule, *(line(c) for c in cells[1:])])


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(table: Sequence[Row]) -> str:
    """GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in _cells(r)) + " |" for r in table]
    return "\n".join(lines)


def render_meta(meta: dict[str, Any]) -> str:
    """One paragraph saying when, where and under which load the figures were taken."""
    load_before = meta.get("loadavg_before") or []
    load_after = meta.get("loadavg_after") or []
    fmt_load: Callable[[Sequence[float]], str] = lambda xs: "/".join(f"{x:.1f}" for x in xs) or NA  # noqa: E731
    options = meta.get("server_options") or {}
    return (
        f"Run {meta.get('started_utc', NA)} ({'quick' if meta.get('quick') else 'full'} plan, "
        f"{meta.get('seconds', 0):.0f} s), {meta.get('cores', NA)} cores, load average {fmt_load(load_before)} "
        f"before and {fmt_load(load_after)} after, git {meta.get('git') or NA}"
        + (f", server options {options}" if options else "")
        + (f", server command `{' '.join(meta['server_command'])}`" if meta.get("server_command") else "")
        + ". Loopback only; one load generator process (the client library's `run_load`)."
    )


def markdown_document(results: dict[str, Any]) -> str:
    """The dated .md file: when/where, the table, the profile summary, failed steps."""
    parts = [
        f"# Benchmark {_get(results, 'meta', 'started_utc') or ''}".rstrip(),
        "",
        render_meta(results.get("meta") or {}),
        "",
        render_markdown(rows(results)),
    ]
    for view, title in (("gil", "thread holding the GIL"), ("threads", "all busy threads")):
        profile = _get(results, "profile", view)
        if not profile or not profile.get("samples"):
            continue
        parts += [
            "",
            f"## Profile of our server at saturation (py-spy, {title}, {profile['samples']} samples)",
            "",
            "| share of samples | where |",
            "|---|---|",
        ]
        parts += [f"| {p:.1f} % | thread: {_md_escape(name)} |" for name, p in profile["threads"].items()]
        parts += [f"| {p:.1f} % | area: {_md_escape(name)} |" for name, p in profile["areas"].items()]
        parts += [
            f"| {h['percent']:.1f} % | inclusive: {_md_escape(h['function'].strip())} |"
            for h in profile["hot_path_inclusive"]
        ]
    errors = results.get("errors") or {}
    if errors:
        parts += ["", "## Steps that failed", ""]
        parts += [f"- {step}: {_md_escape(message)}" for step, message in sorted(errors.items())]
    return "\n".join(parts) + "\n"


def file_stamp(started_utc: str) -> str:
    """'2026-11-29T19:21:30Z' -> '2026-11-29T192130Z' (no colons in file names)."""
    return started_utc.replace(":", "")
