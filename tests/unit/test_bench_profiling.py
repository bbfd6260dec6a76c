"""The py-spy summary: collapsed-stack parsing and the shares it reports (no profiler runs here)."""

from __future__ import annotations

from mlserving_bench import profiling

NET = "thread (11): mqtt-server:4f2a;Thread.run (threading.py);Connection._run (mlserving_common/mqtt/connection.py)"
LAYER = "mlserving_common/mqtt/connection.py"
READ = f"{NET};Connection._serve ({LAYER});Connection._read ({LAYER})"
WORKER = "thread (12): batch-worker;Thread.run (threading.py);Batcher._run (mlserving_server/batching.py)"
INFER = f"{WORKER};Pipeline.process (mlserving_server/pipeline.py);Pipeline._infer (mlserving_server/pipeline.py)"

COLLAPSED = f"""
{READ};Transport._receive (mlserving_server/transport.py);Pipeline.admit (mlserving_server/pipeline.py) 10
{READ};Connection._feed (mlserving_common/mqtt/connection.py);split (mlserving_common/mqtt/framing.py) 30
{WORKER};Pipeline.process (mlserving_server/pipeline.py);parse_request (mlserving_common/protocol.py) 20
{INFER};ModelRuntime.predict (mlserving_server/runtime.py);Interpreter.invoke (ai_edge_litert/interpreter.py) 40
not a stack line
"""


def test_parse_collapsed_skips_junk() -> None:
    stacks = profiling.parse_collapsed(COLLAPSED.splitlines())
    assert [count for _, count in stacks] == [10, 30, 20, 40]
    assert stacks[0][0][-1] == "Pipeline.admit (mlserving_server/pipeline.py)"


def test_split_frame() -> None:
    assert profiling.split_frame("Connection.publish (mlserving_common/mqtt/connection.py)") == (
        "Connection.publish",
        "mlserving_common/mqtt/connection.py",
    )
    assert profiling.split_frame("split (mlserving_common/mqtt/framing.py:88)") == (
        "split",
        "mlserving_common/mqtt/framing.py",
    )
    assert profiling.split_frame("thread (12): batch-worker") == ("thread (12): batch-worker", "")


def test_summary_shares() -> None:
    summary = profiling.summarize(profiling.parse_collapsed(COLLAPSED.splitlines()))
    assert summary["samples"] == 100
    assert summary["threads"] == {"batch worker": 60.0, "MQTT network thread": 40.0}
    areas = summary["areas"]
    assert areas["LiteRT (interpreter.py: set_tensor/invoke/get_tensor)"] == 40.0
    assert areas["MQTT layer (mlserving_common.mqtt: socket loop, framing, outbox; mqtt5 codec calls)"] == 30.0
    assert areas["request parse + validate (protocol.py parse_request, orjson)"] == 20.0
    hot = {h["function"].strip(): h["percent"] for h in summary["hot_path_inclusive"]}
    assert hot["MQTT network loop (Connection._run)"] == 40.0
    assert hot["read: packets in (Connection._read: recv, framing, dispatch)"] == 40.0
    assert hot["transport._receive (flow control, hand-over, ack)"] == 10.0
    assert hot["pipeline.admit (rate limit + enqueue)"] == 10.0
    assert hot["Connection.publish (encode + queue + wake-up)"] == 0.0
    assert hot["runtime.predict"] == 40.0
    assert summary["top_innermost"][0] == {
        "frame": "Interpreter.invoke (ai_edge_litert/interpreter.py)",
        "percent": 40.0,
    }
    assert "by area" in profiling.render(summary)


def test_empty_profile() -> None:
    assert profiling.summarize([]) == {"samples": 0}
    assert profiling.render({"samples": 0}) == "profile: no samples"
