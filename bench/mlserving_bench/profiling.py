"""Sampling profile of a server under load with py-spy, boiled down to what dominates.

py-spy (PyPI: py-spy) attaches to a running process from outside, so the server runs unmodified.
It writes collapsed stacks ("frame;frame;frame count"); `summarize` turns them into shares of
samples: per thread, per area (MQTT layer, JSON, numpy, LiteRT, locks, ...) by the innermost frame,
and inclusive shares of the server's hot-path functions.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Area of a sample, decided by its innermost Python frame (C code is charged to its caller).
AREAS: tuple[tuple[str, str], ...] = (
    ("LiteRT (interpreter.py: set_tensor/invoke/get_tensor)", "ai_edge_litert/"),
    ("MQTT layer (mlserving_common.mqtt: socket loop, framing, outbox; mqtt5 codec calls)", "mlserving_common/mqtt/"),
    ("server transport (transport.py)", "mlserving_server/transport.py"),
    ("request parse + validate (protocol.py parse_request, orjson)", "protocol.py:parse_request"),
    ("answer encode (protocol.py encode_*, orjson)", "protocol.py:encode_"),
    ("wire contract, other (protocol.py)", "protocol.py"),
    ("pipeline (admit/process/_validate/_infer/_send)", "mlserving_server/pipeline.py"),
    ("runtime.predict (numpy normalise/copy + LiteRT C call)", "mlserving_server/runtime.py"),
    ("batching worker loop", "mlserving_server/batching.py"),
    ("prometheus metrics", "prometheus_client/"),
    ("numpy (Python-level)", "numpy/"),
    ("threading / locks / waits", "threading.py"),
    ("sockets / select", "selectors.py"),
    ("sockets / select", "socket.py"),
    ("logging", "logging/"),
)

#: Hot-path functions whose inclusive share is reported: (label, function name, file fragment).
HOT_FUNCTIONS: tuple[tuple[str, str, str], ...] = (
    ("MQTT network loop (Connection._run)", "_run", "mlserving_common/mqtt/connection.py"),
    ("  read: packets in (Connection._read: recv, framing, dispatch)", "_read", "mlserving_common/mqtt/connection.py"),
    ("    transport._receive (flow control, hand-over, ack)", "_receive", "mlserving_server/transport.py"),
    ("      pipeline.admit (rate limit + enqueue)", "admit", "pipeline.py"),
    ("    PUBACKs in (Connection._on_puback: outbox refill)", "_on_puback", "mlserving_common/mqtt/connection.py"),
    ("  write: packets out (Connection._flush)", "_flush", "mlserving_common/mqtt/connection.py"),
    ("batch worker (Batcher._run)", "_run", "batching.py"),
    ("  pipeline.process (one batch)", "process", "pipeline.py"),
    ("    parse_request (orjson + validation)", "parse_request", "protocol.py"),
    ("    _infer (arrays, predict, answers)", "_infer", "pipeline.py"),
    ("      runtime.predict", "predict", "runtime.py"),
    ("        LiteRT invoke", "invoke", "ai_edge_litert/"),
    ("      encode_prediction (orjson)", "encode_prediction", "protocol.py"),
    ("      _send (publish + metrics)", "_send", "pipeline.py"),
    ("        Transport.publish (outgoing answer count)", "publish", "mlserving_server/transport.py"),
    ("          Connection.publish (encode + queue + wake-up)", "publish", "mlserving_common/mqtt/connection.py"),
    ("        metrics (prometheus inc/observe)", "", "prometheus_client/"),
)

#: The two recordings of a profile step and what they show.
VIEWS = {
    "gil": "samples of the thread holding the GIL (where the one Python core goes)",
    "threads": "samples of every busy thread (includes time spent waiting to get the GIL back)",
}

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, else on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start_record(pid: int, seconds: float, output: Path, rate: int = 250, gil: bool = False) -> subprocess.Popen:
    """py-spy record in the background, raw collapsed stacks per thread, without line numbers."""
    exe = py_spy()
    if exe is None:
        raise FileNotFoundError("py-spy not found: pip install py-spy")
    argv = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--threads",
        "--nolineno",
        "--nonblocking",
        "--output",
        str(output),
    ]
    if gil:
        argv.append("--gil")
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """'a;b;c 12' lines -> [(["a", "b", "c"], 12)] (outermost frame first)."""
    stacks = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        stacks.append((frames.split(";"), int(count)))
    return stacks


def split_frame(frame: str) -> tuple[str, str]:
    """'publish (mlserving_common/mqtt/connection.py)' -> ('publish', 'mlserving_common/mqtt/connection.py')."""
    match = _FRAME.match(frame)
    return (match.group("func"), match.group("file")) if match else (frame, "")


def area_of(frames: list[str]) -> str:
    """Area of the innermost Python frame, see AREAS."""
    for frame in reversed(frames):
        func, file = split_frame(frame)
        if not file:
            continue  # process / thread pseudo-frames
        key = f"{file}:{func.rsplit('.', 1)[-1]}"
        for label, fragment in AREAS:
            if fragment in key:
                return label
        return f"other ({file})"
    return "other"


def thread_name(frames: list[str]) -> str:
    """'thread (123): batch-worker' -> a readable thread label (py-spy --threads puts it first)."""
    head = frames[0] if frames else ""
    if not head.startswith("thread "):
        return "?"
    name = head.partition(": ")[2] or head
    for prefix, label in (
        ("mqtt-", "MQTT network thread"),
        ("batch-worker", "batch worker"),
        ("MainThread", "main"),
        ("model-poller", "model poller"),
        ("http", "http"),
    ):
        if name.startswith(prefix):
            return label
    return name


def _has(frames: list[str], func: str, file_fragment: str) -> bool:
    for frame in frames:
        f, file = split_frame(frame)
        if (not func or f.rsplit(".", 1)[-1] == func) and file_fragment in file:
            return True
    return False


def summarize(stacks: list[tuple[list[str], int]], top: int = 15) -> dict[str, Any]:
    """Shares (in % of all samples) by thread, by area, of hot functions, and the top innermost frames."""
    total = sum(count for _, count in stacks)
    if not total:
        return {"samples": 0}
    pct = lambda n: round(100.0 * n / total, 1)  # noqa: E731
    threads: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, count in stacks:
        threads[thread_name(frames)] += count
        by_area[area_of(frames)] += count
        leaves[frames[-1]] += count
    hot = []
    for label, func, fragment in HOT_FUNCTIONS:
        n = sum(count for frames, count in stacks if _has(frames, func, fragment))
        hot.append({"function": label, "percent": pct(n)})
    return {
        "samples": total,
        "threads": {name: pct(n) for name, n in threads.most_common()},
        "areas": {name: pct(n) for name, n in by_area.most_common()},
        "hot_path_inclusive": hot,
        "top_innermost": [{"frame": frame, "percent": pct(n)} for frame, n in leaves.most_common(top)],
    }


def render(summary: dict[str, Any]) -> str:
    """Plain-text report of a summary."""
    if not summary.get("samples"):
        return "profile: no samples"
    lines = [f"profile: {summary['samples']} samples", "", "by thread:"]
    lines += [f"  {p:5.1f} %  {name}" for name, p in summary["threads"].items()]
    lines += ["", "by area (innermost Python frame; C calls count for their caller):"]
    lines += [f"  {p:5.1f} %  {name}" for name, p in summary["areas"].items()]
    lines += ["", "hot path, inclusive:"]
    lines += [f"  {h['percent']:5.1f} %  {h['function']}" for h in summary["hot_path_inclusive"]]
    lines += ["", "top innermost frames:"]
    lines += [f"  {t['percent']:5.1f} %  {t['frame']}" for t in summary["top_innermost"]]
    return "\n".join(lines)
