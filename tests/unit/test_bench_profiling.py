"""The py-spy summary: collapsed-stack parsing and the shares it reports (no profiler runs here)."""

from __future__ import annotations

from mlserving_bench import profiling

NET = "thread (11): paho-mqtt-client-mlserving-vm-1;Thread.run (threading.py);Client.loop_forever (paho/mqtt/client.py)"
WORKER = "thread (12): batch-worker;Thread.run (threading.py);Batcher._run (mlserving_server/batching.py)"

COLLAPSED = f"""
{NET};Client._packet_read (paho/mqtt/client.py);Pipeline.admit (mlserving_server/pipeline.py) 10
{NET};Client._packet_read (paho/mqtt/client.py);decode_publish (paho/mqtt/_packet.py) 30
{WORKER};Pipeline.process (mlserving_server/pipeline.py);parse_request (mlserving_common/protocol.py) 20
{WORKER};Pipeline.process (mlserving_server/pipeline.py);Pipeline._infer (mlserving_server/pipeline.py);ModelRuntime.predict (mlserving_server/runtime.py);Interpreter.invoke (ai_edge_litert/interpreter.py) 40
not a stack line
"""


def test_parse_collapsed_skips_junk() -> None:
    stacks = profiling.parse_collapsed(COLLAPSED.splitlines())
    assert [count for _, count in stacks] == [10, 30, 20, 40]
    assert stacks[0][0][-1] == "Pipeline.admit (mlserving_server/pipeline.py)"


def test_split_frame() -> None:
    assert profiling.split_frame("Client.publish (paho/mqtt/client.py)") == ("Client.publish", "paho/mqtt/client.py")
    assert profiling.split_frame("readUTF (paho/mqtt/properties.py:88)") == ("readUTF", "paho/mqtt/properties.py")
    assert profiling.split_frame("thread (12): batch-worker") == ("thread (12): batch-worker", "")


def test_summary_shares() -> None:
    summary = profiling.summarize(profiling.parse_collapsed(COLLAPSED.splitlines()))
    assert summary["samples"] == 100
    assert summary["threads"] == {"batch worker": 60.0, "paho network thread": 40.0}
    areas = summary["areas"]
    assert areas["LiteRT (interpreter.py: set_tensor/invoke/get_tensor)"] == 40.0
    assert areas["paho MQTT client"] == 30.0
    assert areas["request parse + validate (protocol.py parse_request, orjson)"] == 20.0
    hot = {h["function"].strip(): h["percent"] for h in summary["hot_path_inclusive"]}
    assert hot["paho network loop (loop_forever)"] == 40.0
    assert hot["pipeline.admit (rate limit + enqueue)"] == 10.0
    assert hot["runtime.predict"] == 40.0
    assert summary["top_innermost"][0] == {"frame": "Interpreter.invoke (ai_edge_litert/interpreter.py)", "percent": 40.0}
    assert "by area" in profiling.render(summary)


def test_empty_profile() -> None:
    assert profiling.summarize([]) == {"samples": 0}
    assert profiling.render({"samples": 0}) == "profile: no samples"
