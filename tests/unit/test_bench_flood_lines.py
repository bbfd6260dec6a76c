"""The bench's flood lines print the server's peak RSS against the chart's memory limit, at 2x
and 4x saturation, and the 4x flood is judged on it (issue 13, finding 3)."""

from __future__ import annotations

from typing import Any

from mlserving_bench import chartlimits, report


def _flood(factor: float, peak: float, lost: int = 0) -> dict[str, Any]:
    load = {
        "sent": 1000,
        "answered": 700,
        "errors": {"overloaded": 300 - lost},
        "lost": lost,
        "target_rate": 4000.0 * factor,
        "offered_rate": 3900.0 * factor,
    }
    return {"factor": factor, "load": load, "rss_peak_mb": peak, "limit_mb": 512.0}


def _results(peak4: float, lost4: int = 0) -> dict[str, Any]:
    floods = [_flood(2.0, 120.0), _flood(4.0, peak4, lost4)]
    return {"meta": {"cores": 2}, "errors": {}, "floods": floods, "flood": floods[0]}


def test_each_flood_line_states_peak_rss_against_the_chart_limit() -> None:
    rows = [r for r in report.rows(_results(200.0)) if r.step == "7 flood"]
    assert [r.measurement.split(" ")[0] for r in rows] == ["2×", "4×"]
    assert rows[1].target == "server peak RSS 200 MiB = 39 % of the chart's 512 MiB limit"
    assert rows[1].result == "sent 1000: answered 700, rejected overloaded 300, lost 0"


def test_the_4x_flood_fails_above_60_percent_or_with_silent_loss() -> None:
    targets = {t.name: t for t in report.targets(_results(200.0))}
    assert targets["server peak RSS in the 4× flood, % of chart limit"].verdict == "PASS"
    assert targets["flood at 4× saturation: lost silently"].verdict == "PASS"
    targets = {t.name: t for t in report.targets(_results(320.0, lost4=5))}
    assert targets["server peak RSS in the 4× flood, % of chart limit"].verdict == "FAIL"
    assert targets["flood at 4× saturation: lost silently"].verdict == "FAIL"


def test_chart_limit_is_read_from_the_chart() -> None:
    assert chartlimits.quantity_bytes("512Mi") == 512 * 1024**2
    assert chartlimits.quantity_bytes("1G") == 10**9
    assert chartlimits.server_memory_limit_mib() > 0
    assert set(chartlimits.server_limits()) >= {"max_pending", "max_outgoing", "receive_maximum"}
