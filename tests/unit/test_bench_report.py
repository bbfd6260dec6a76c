"""The benchmark's pure parts: number formatting, ratios, target verdicts, the table, file names.

No benchmark runs here and nothing is timed: the results dict is written out by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from mlserving_bench import report
from mlserving_bench.image import parse_size_mb
from mlserving_bench.models import SweepResult
from mlserving_bench.stack import parse_option, set_dotted


def _load(throughput: float, **extra: Any) -> dict[str, Any]:
    return {"throughput": throughput, "lost": 0, "error_total": 0, "errors": {}, "concurrency": 256, **extra}


def sample_results() -> dict[str, Any]:
    return {
        "meta": {
            "started_utc": "2026-11-29T19:21:30Z",
            "cores": 2,
            "quick": True,
            "seconds": 61.0,
            "loadavg_before": [1.0, 2.0, 3.0],
            "loadavg_after": [1.5, 2.5, 3.5],
            "git": "abc123",
        },
        "model": {
            "lstm": {"batch1_us": 12.8, "best_batch": 64, "best_us_per_sample": 3.4},
            "ann": {"batch1_us": 3.9, "best_batch": 256, "best_us_per_sample": 0.35},
        },
        "echo": {
            "load": _load(8000.0, client_cpu_us_per_request=40.0),
            "cpu": {"echo": 99.0, "broker": 40.0},
            "rounds": [7000.0, 8000.0],
            "median_server_cpu_us_per_request": 120.0,
        },
        "naive": {"load": _load(4000.0), "cpu": {"naive": 100.0}, "median_server_cpu_us_per_request": 250.0},
        "naive_layer": {
            "load": _load(10000.0),
            "cpu": {"naive_layer": 100.0},
            "median_server_cpu_us_per_request": 90.0,
        },
        "ours": {
            "load": _load(12000.0),
            "cpu": {"server": 100.0},
            "server_cpu_us_per_request": 80.0,
            "median_server_cpu_us_per_request": 83.0,
            "server": {"mean_batch": 20.0, "model_us_per_sample": 4.0, "inference_share": 0.06},
        },
        "latency": [
            {"fraction": 0.25, "rate": 3000.0, "load": _load(3000.0, latency={"p50_ms": 0.9, "p99_ms": 2.0})},
            {"fraction": 0.5, "rate": 6000.0, "load": _load(6000.0, latency={"p50_ms": 1.1, "p99_ms": 4.5})},
        ],
        "batched": [
            {"batch": 64, "load": _load(1500.0, forecasts_per_second=96_000.0)},
            {"batch": 256, "load": _load(450.0, forecasts_per_second=115_200.0)},
        ],
        "replicas2": {"load": _load(18000.0)},
        "flood": {
            "load": {
                "sent": 100,
                "answered": 80,
                "errors": {"overloaded": 20},
                "lost": 0,
                "target_rate": 24000.0,
                "offered_rate": 23000.0,
            }
        },
        "footprint": {
            "startup_seconds": [1.5, 1.7],
            "rss_mb": 90.0,
            "rss_peak_mb": 120.0,
            "image_mb": None,
            "image_source": "not built",
        },
        "errors": {},
    }


# -- formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "n/a"), (0, "0/s"), (12345.6, "12,346/s"), (100_000, "100,000/s")],
)
def test_fmt_rate(value: float | None, expected: str) -> None:
    assert report.fmt_rate(value) == expected


def test_fmt_small_units() -> None:
    assert report.fmt_ratio(3.14159) == "3.14×"
    assert report.fmt_ratio(None) == "n/a"
    assert report.fmt_ms(4.5) == "4.50 ms"
    assert report.fmt_us(0.1534) == "0.153 µs"
    assert report.fmt_us(12.84) == "12.8 µs"
    assert report.fmt_mb(149.6) == "150 MB"
    assert report.fmt_seconds(1.234) == "1.23 s"
    assert report.fmt_percent(None) == "n/a"


def test_ratio_handles_missing_and_zero() -> None:
    assert report.ratio(6.0, 2.0) == 3.0
    assert report.ratio(None, 2.0) is None
    assert report.ratio(1.0, None) is None
    assert report.ratio(1.0, 0) is None


@pytest.mark.parametrize(
    ("value", "threshold", "higher", "expected"),
    [
        (3.0, 3.0, True, "PASS"),
        (2.99, 3.0, True, "FAIL"),
        (5.0, 5.0, False, "PASS"),
        (5.01, 5.0, False, "FAIL"),
        (None, 1.0, True, "n/a"),
        (0, 0, False, "PASS"),
    ],
)
def test_verdict_boundaries(value: float | None, threshold: float, higher: bool, expected: str) -> None:
    assert report.verdict(value, threshold, higher_is_better=higher) == expected


# -- targets and table ------------------------------------------------------------------------


def _targets(results: dict[str, Any]) -> dict[str, report.Target]:
    return {t.name: t for t in report.targets(results)}


def test_targets_from_sample_results() -> None:
    t = _targets(sample_results())
    assert t["ours / naive on paho-mqtt"].shown == "3.00×" and t["ours / naive on paho-mqtt"].verdict == "PASS"
    assert t["p99 at 50 % of saturation"].shown == "4.50 ms" and t["p99 at 50 % of saturation"].verdict == "PASS"
    assert t["batched forecasts/s per replica"].shown == "115,200/s"  # the best batched size counts
    assert t["flood at 2× saturation: lost silently"].verdict == "PASS"
    assert t["start to ready"].shown == "1.50 s"  # the first start: a cold one
    assert t["server RSS after load"].verdict == "PASS"
    assert t["server image"].verdict == "n/a"


def test_the_echo_ratio_is_shown_as_a_share_of_the_layers_ceiling_not_judged() -> None:
    results = sample_results()  # 12000 / 8000: the echo stands on the same MQTT layer as our server
    assert not any("echo" in t.name for t in report.targets(results))
    row = {r.measurement: r for r in report.rows(results)}["ours / echo on mlserving_common.mqtt"]
    assert (row.step, row.result, row.verdict) == ("ratios", "1.50×", "")
    assert "share of the layer's ceiling" in row.target


def test_both_naive_rows_say_which_mqtt_layer_they_run_on() -> None:
    rows = {r.measurement: r for r in report.rows(sample_results())}
    assert (
        rows["naive on paho-mqtt: one message → one inference (the tutorial's way, naive.py --mqtt paho), req/s"].result
        == "4,000/s"
    )
    assert (
        rows["naive on mlserving_common.mqtt: one message → one inference (naive.py --mqtt layer), req/s"].result
        == "10,000/s"
    )
    assert rows["naive on mlserving_common.mqtt / naive on paho-mqtt"].result == "2.50×"  # what the layer buys
    assert rows["ours / naive on mlserving_common.mqtt"].result == "1.20×"  # what batching buys
    assert rows["CPU per request: naive on mlserving_common.mqtt / ours"].result == "1.08×"  # 90 / 83


def test_two_replicas_are_not_judged_on_two_cores() -> None:
    results = sample_results()  # 18000 / 12000 = 1.5 on a 2-core machine: shown, not judged
    target = _targets(results)["2 replicas / 1"]
    assert target.shown == "1.50×" and target.verdict == "n/a" and "2 cores" in target.goal
    results["meta"]["cores"] = 8
    assert _targets(results)["2 replicas / 1"].verdict == "FAIL"


def test_lost_requests_fail_the_flood_target() -> None:
    results = sample_results()
    results["flood"]["load"]["lost"] = 3
    assert _targets(results)["flood at 2× saturation: lost silently"].verdict == "FAIL"


def test_missing_steps_read_na_everywhere() -> None:
    results = {"meta": {"cores": 2}, "errors": {"ours": "RuntimeError: boom"}}
    assert {t.verdict for t in report.targets(results)} == {"n/a"}
    table = report.rows(results)
    assert any(r.result == "n/a" for r in table)
    text = report.render_text(table)
    assert "ours / naive" in text


def test_model_share_and_cpu_ratios() -> None:
    results = sample_results()
    assert report.model_share(results) == pytest.approx(4.0 * 12000 / 1e6)
    assert report.model_share_of_cpu(results) == pytest.approx(4.0 / 80.0)
    rows = {r.measurement: r for r in report.rows(results)}
    assert rows["CPU per request: naive on paho-mqtt / ours"].result == "3.01×"  # medians: 250 / 83
    assert rows["model share of time at saturation (sweep µs/sample at mean batch × req/s)"].result == "4.8 %"
    assert "best of 7,000 / 8,000" in rows["echo on mlserving_common.mqtt (no model), req/s"].target
    flood = next(r for r in report.rows(results) if r.step == "7 flood")
    assert flood.result == "sent 100: answered 80, rejected overloaded 20, lost 0"


def test_render_text_aligns_columns() -> None:
    table = [report.Row("a", "b", "c"), report.Row("longer step", "m", "r", "t", "PASS")]
    lines = report.render_text(table).splitlines()
    assert lines[0].startswith("step")
    assert lines[2].index("b") == lines[3].index("m")  # the measurement column starts at one offset


def test_markdown_escapes_pipes_and_has_one_row_per_entry() -> None:
    table = [report.Row("s", "a | b", "1")]
    md = report.render_markdown(table).splitlines()
    assert md[0] == "| step | measurement | result | note / target | verdict |"
    assert md[2] == "| s | a \\| b | 1 |  |  |"


def test_markdown_document_lists_failed_steps() -> None:
    results = sample_results()
    results["errors"] = {"naive": "TimeoutError: not ready"}
    doc = report.markdown_document(results)
    assert doc.startswith("# Benchmark 2026-11-29T19:21:30Z")
    assert "## Steps that failed" in doc and "naive: TimeoutError" in doc


def test_file_stamp_has_no_colons() -> None:
    assert report.file_stamp("2026-11-29T19:21:30Z") == "2026-11-29T192130Z"


# -- small parsers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("128 MB", 128.0), ("1.95 GB", 1950.0), ("512 kB", 0.512), ("", None), ("big", None)],
)
def test_parse_size_mb(text: str, expected: float | None) -> None:
    assert parse_size_mb(text) == (pytest.approx(expected) if expected is not None else None)


def test_parse_option_reads_yaml_values() -> None:
    assert parse_option("batching.max_batch=128") == ("batching.max_batch", 128)
    assert parse_option("batching.max_wait_ms=0.5") == ("batching.max_wait_ms", 0.5)
    assert parse_option("log_level=warning") == ("log_level", "warning")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_option("batching.max_batch")


def test_set_dotted_creates_mappings() -> None:
    config: dict[str, Any] = {"batching": {"max_batch": 64}}
    set_dotted(config, "batching.max_wait_ms", 1.0)
    set_dotted(config, "limits.max_pending", 5000)
    assert config == {"batching": {"max_batch": 64, "max_wait_ms": 1.0}, "limits": {"max_pending": 5000}}


def test_sweep_result_best_batch_and_padding() -> None:
    sweep = SweepResult("lstm", "v1", {1: 12.0, 32: 96.0, 64: 256.0})
    assert sweep.best_batch == 32  # 3 µs per sample
    assert sweep.per_sample_us(64) == 4.0
    # a mean batch of 20 runs in the 32 bucket (padded): 96 µs spread over 20 samples
    assert sweep.per_sample_at(20) == pytest.approx(4.8)
    assert sweep.per_sample_at(1000) == 4.0  # beyond the sweep: the largest size's cost
    assert sweep.to_dict()["best_batch"] == 32


def test_two_replicas_compare_with_the_single_run_just_before() -> None:
    results = sample_results()
    results["replicas2"]["single_throughput"] = 10000.0  # 18000 / 10000, not / 12000
    assert report.replicas_ratio(results) == pytest.approx(1.8)
    results["meta"]["cores"] = 8
    assert _targets(results)["2 replicas / 1"].verdict == "PASS"
