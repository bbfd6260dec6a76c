"""Which MQTT client the project's one connection layer stands on: the same echo on every candidate.

Five hand-made MQTT stacks are being replaced by one layer (`mlserving_common.mqtt`, on the `mqtt5`
codec). This module is the measurement the choice rests on: each candidate library runs the same
echo responder — MQTT v5, a shared subscription at QoS 1 like the server's, the request's payload
published at QoS 1 to its Response Topic with its Correlation Data, the request acknowledged after
its answer where the library lets us choose — against the bench's real Mosquitto, loaded by the
same load generator. The libraries are imported inside their responders, so a missing one costs
only its own candidate. The decision metric is the responder process's own
CPU time per answer (user + system, /proc): unlike req/s it barely depends on how much of the
shared machine the run got. Saturation req/s and p50/p99 at one fixed moderate rate go beside it.

Candidates, each in its own process serving its own tenant (`layer-<name>`):

- `paho`: paho-mqtt 2.2, public API only (callback API v2, threaded loop, manual_ack + ack()).
  `serve_paho` takes the answer as a function: naive.py runs the same loop with a model call in
  it, the bench's "naive" baseline (the tutorial's server).
- `gmqtt`: gmqtt 0.8.0 on asyncio, `optimistic_acknowledgement=False` (PUBACK after on_message,
  which must then be a coroutine: one task per message). Its publish() raises OverflowError once
  the broker's Receive Maximum of answers is unacknowledged (no queue, no PUBACK callback), so
  the responder polls for a free packet id.
- `aiomqtt`: aiomqtt 2.5.1 (asyncio over paho); it offers no manual ack, paho acknowledges on
  receipt. Its `publish` waits for the PUBACK, so each answer is its own task.
- `mqtt5`: the mqtt5 0.8.0 sans-io codec with the smallest correct loop we could write: one
  thread, one blocking socket, Receive Maximum respected, keep-alive pings. The floor for the codec.
- `ours`: `mlserving_common.mqtt` itself, through `python -m mlserving_bench.echo` — the project's
  no-model echo baseline, so the comparison and step 2 of the table measure the same program.

    MLSERVING_BROKER_PASSWORD=... python -m mlserving_bench.mqtt_layers --layer gmqtt --port 1883 \\
        --topic ml/layer-gmqtt/requests
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mqtt5

from mlserving_bench import procs, responder
from mlserving_client import transport
from mlserving_common import protocol

if TYPE_CHECKING:
    from mlserving_bench.stack import Stack
    from mlserving_client.load import LoadResult

#: name -> what runs, as the table shows it.
LAYERS: dict[str, str] = {
    "paho": "paho-mqtt 2.2, public API (threaded loop, manual ack)",
    "gmqtt": "gmqtt 0.8.0 (asyncio, ack after async on_message)",
    "aiomqtt": "aiomqtt 2.5.1 (asyncio over paho, ack on receipt)",
    "mqtt5": "mqtt5 0.8.0 codec + minimal blocking socket loop",
    "ours": "mlserving_common.mqtt (mqtt5 + network thread; echo.py)",
}
#: The project's own layer is measured as the project's echo responder, not a copy of it.
MODULES = {"ours": "mlserving_bench.echo"}
MODULE = "mlserving_bench.mqtt_layers"
KEEPALIVE = 30


def tenant(layer: str) -> str:
    return f"layer-{layer}"


TENANTS = tuple(tenant(layer) for layer in LAYERS)


# ---------------------------------------------------------------------------------------------
# The responders (one process each: `python -m mlserving_bench.mqtt_layers --layer NAME ...`)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every candidate connects with; the same for all of them."""

    host: str
    port: int
    username: str
    password: str | None
    client_id: str
    shared: str
    qos: int
    ready_file: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace, kind: str) -> Setup:
        """From responder.add_arguments' options; `kind` goes into the client id (whose process this is)."""
        return cls(
            host=args.host,
            port=args.port,
            username=args.username,
            password=os.environ.get(responder.PASSWORD_ENV),
            client_id=transport.new_client_id(args.username, kind),
            shared=protocol.shared_subscription(args.topic, args.share_group),
            qos=args.qos,
            ready_file=args.ready_file,
        )

    def ready(self) -> None:
        """Tell the parent we serve (it waits for this file); called once the SUBACK granted the filter."""
        if self.ready_file is not None:
            self.ready_file.touch()


def _until_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


async def _until_signal_async() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def echo(payload: bytes) -> bytes:
    return payload


def serve_paho(setup: Setup, handler: responder.Handler = echo) -> None:
    """paho's threaded loop; each request's answer is handler(payload), computed in paho's network thread."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=setup.client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.username_pw_set(setup.username, setup.password)
    client.max_inflight_messages_set(0)  # no cap of our own (default 20): the broker's window bounds us
    client.max_queued_messages_set(0)

    def on_socket_open(_c: mqtt.Client, _u: Any, sock: Any) -> None:  # paho leaves Nagle on
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if not reason_code.is_failure:
            c.subscribe(setup.shared, qos=setup.qos)

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, reason_codes: Any, _p: Any) -> None:
        if not any(rc.is_failure for rc in reason_codes):
            setup.ready()

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        reply_to = getattr(msg.properties, "ResponseTopic", None)
        if reply_to:
            props = Properties(PacketTypes.PUBLISH)
            correlation = getattr(msg.properties, "CorrelationData", None)
            if correlation is not None:
                props.CorrelationData = correlation
            c.publish(reply_to, handler(bytes(msg.payload)), setup.qos, properties=props)  # no copy: paho gives bytes
        c.ack(msg.mid, msg.qos)

    client.on_socket_open, client.on_connect = on_socket_open, on_connect
    client.on_subscribe, client.on_message = on_subscribe, on_message
    connect = Properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 0
    connect.ReceiveMaximum = responder.RECEIVE_MAXIMUM
    client.connect_async(setup.host, setup.port, keepalive=KEEPALIVE, clean_start=True, properties=connect)
    client.loop_start()
    _until_signal()
    client.disconnect()
    client.loop_stop()


async def _gmqtt(setup: Setup) -> None:
    import gmqtt

    client = gmqtt.Client(
        setup.client_id,
        clean_session=True,
        optimistic_acknowledgement=False,
        session_expiry_interval=0,
        receive_maximum=responder.RECEIVE_MAXIMUM,
    )
    client.set_auth_credentials(setup.username, setup.password)

    def on_subscribe(_c: gmqtt.Client, _mid: int, granted: list[int], _p: Any) -> None:
        if all(code < 0x80 for code in granted):
            setup.ready()

    async def on_message(c: gmqtt.Client, _topic: str, payload: bytes, _qos: int, properties: dict[str, Any]) -> int:
        # A coroutine, because gmqtt sends the PUBACK of a plain function's message never
        # (optimistic_acknowledgement=False); a coroutine's once it returns, with its result as the code.
        reply_to = properties.get("response_topic")
        if reply_to:
            correlation = properties.get("correlation_data")
            extra = {"correlation_data": correlation[0]} if correlation else {}
            while True:
                try:
                    c.publish(reply_to[0], payload, qos=setup.qos, **extra)
                    break
                except OverflowError:  # no packet id free within the broker's Receive Maximum: gmqtt
                    await asyncio.sleep(0.001)  # queues nothing and reports no PUBACK, so poll
        return 0

    client.on_subscribe, client.on_message = on_subscribe, on_message
    await client.connect(setup.host, setup.port, keepalive=KEEPALIVE)
    client.subscribe(setup.shared, qos=setup.qos)
    await _until_signal_async()
    await client.disconnect()


def serve_gmqtt(setup: Setup) -> None:
    asyncio.run(_gmqtt(setup))


async def _aiomqtt(setup: Setup) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    connect = Properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 0
    connect.ReceiveMaximum = responder.RECEIVE_MAXIMUM
    async with aiomqtt.Client(
        setup.host,
        setup.port,
        username=setup.username,
        password=setup.password,
        identifier=setup.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        properties=connect,
        keepalive=KEEPALIVE,
        max_inflight_messages=0,
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    ) as client:
        codes = await client.subscribe(setup.shared, qos=setup.qos)
        if any(getattr(code, "is_failure", False) for code in codes):
            raise RuntimeError(f"subscription refused: {codes}")
        setup.ready()

        async def answer_all() -> None:
            async with asyncio.TaskGroup() as tasks:  # publish() waits for its PUBACK: one task per answer
                async for message in client.messages:
                    reply_to = getattr(message.properties, "ResponseTopic", None)
                    if not reply_to:
                        continue
                    props = Properties(PacketTypes.PUBLISH)
                    correlation = getattr(message.properties, "CorrelationData", None)
                    if correlation is not None:
                        props.CorrelationData = correlation
                    tasks.create_task(client.publish(reply_to, message.payload, qos=setup.qos, properties=props))

        answering = asyncio.create_task(answer_all())
        stopped = asyncio.create_task(_until_signal_async())
        await asyncio.wait((answering, stopped), return_when=asyncio.FIRST_COMPLETED)
        if answering.done():
            answering.result()  # it only ends by failing: raise that
        answering.cancel()


def serve_aiomqtt(setup: Setup) -> None:
    asyncio.run(_aiomqtt(setup))


class Mqtt5Echo:
    """The mqtt5 codec with the least code that is still a correct QoS 1 peer.

    One thread and one blocking socket: every recv() is decoded completely, and everything it
    calls for (answers and PUBACKs) leaves in one send(). Our answers stay within the broker's
    Receive Maximum; a request whose answer has no slot is held unacknowledged until a PUBACK
    frees one. A PINGREQ goes out when nothing arrived for half the keep-alive (an echo sends only
    after it received, so nothing arriving means nothing sent either).
    """

    def __init__(self, setup: Setup, sock: socket.socket) -> None:
        self.setup = setup
        self.sock = sock
        self.inflight: set[int] = set()
        self.window = 65535
        self.held: deque[Any] = deque()
        self.last_id = 0
        self.out: list[bytes] = []
        self.stopping = False

    def _packet_id(self) -> int:
        while True:
            self.last_id = self.last_id % 65535 + 1
            if self.last_id not in self.inflight:
                return self.last_id

    def stop(self) -> None:
        """From the signal handler: end the blocking recv() (it returns b"" once reading is shut)."""
        self.stopping = True
        self.sock.shutdown(socket.SHUT_RD)

    def run(self) -> None:
        password = None if self.setup.password is None else self.setup.password.encode()
        self.sock.sendall(
            mqtt5.ConnectPacket(
                self.setup.client_id,
                username=self.setup.username,
                password=password,
                clean_start=True,
                keep_alive=KEEPALIVE,
                session_expiry_interval=0,
                receive_max=responder.RECEIVE_MAXIMUM,
            ).write()
        )
        self.sock.settimeout(KEEPALIVE / 2)
        buffer = bytearray()
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                self.sock.sendall(mqtt5.PingReqPacket().write())
                continue
            if not data:
                if self.stopping:
                    self.sock.sendall(mqtt5.DisconnectPacket().write())
                    self.sock.close()
                    return
                raise ConnectionError("the broker closed the connection")
            buffer += data
            offset = 0
            with memoryview(buffer) as view:
                while offset < len(buffer):
                    try:
                        packet, used = mqtt5.read(view[offset:])
                    except IndexError:  # a partial packet: the rest comes with the next recv()
                        break
                    offset += used
                    self._handle(packet)
            del buffer[:offset]
            if self.out:
                self.sock.sendall(b"".join(self.out))
                self.out.clear()

    def _handle(self, packet: Any) -> None:
        if isinstance(packet, mqtt5.PublishPacket):
            self._answer(packet)
        elif isinstance(packet, mqtt5.PubAckPacket):
            self.inflight.discard(packet.packet_id)
            while self.held and len(self.inflight) < self.window:
                self._answer(self.held.popleft())
        elif isinstance(packet, mqtt5.ConnAckPacket):
            if int(packet.reason_code) != 0:
                raise ConnectionError(f"broker refused the connection: {packet.reason_code!r}")
            self.window = packet.receive_max
            if packet.server_keep_alive:
                self.sock.settimeout(packet.server_keep_alive / 2)
            topic_filter = mqtt5.TopicFilter(self.setup.shared, max_qos=mqtt5.QoS(self.setup.qos))
            self.out.append(mqtt5.SubscribePacket(self._packet_id(), [topic_filter]).write())
        elif isinstance(packet, mqtt5.SubAckPacket):
            if any(int(code) >= 0x80 for code in packet.reason_codes):
                raise ConnectionError(f"subscription refused: {packet.reason_codes!r}")
            self.setup.ready()
        elif isinstance(packet, mqtt5.DisconnectPacket):
            raise ConnectionError(f"the broker disconnected us: {packet.reason_code!r}")

    def _answer(self, request: Any) -> None:
        if request.response_topic:
            if self.setup.qos and len(self.inflight) >= self.window:
                self.held.append(request)  # unacknowledged: it keeps its slot in the broker's window to us
                return
            packet_id = None
            if self.setup.qos:
                packet_id = self._packet_id()
                self.inflight.add(packet_id)
            self.out.append(
                mqtt5.PublishPacket(
                    request.response_topic,
                    request.payload,
                    qos=mqtt5.QoS(self.setup.qos),
                    packet_id=packet_id,
                    correlation_data=request.correlation_data,
                ).write()
            )
        if request.qos:
            self.out.append(mqtt5.PubAckPacket(request.packet_id).write())


def serve_mqtt5(setup: Setup) -> None:
    sock = socket.create_connection((setup.host, setup.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    echo = Mqtt5Echo(setup, sock)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: echo.stop())
    echo.run()


SERVE: dict[str, Callable[[Setup], None]] = {
    "paho": serve_paho,
    "gmqtt": serve_gmqtt,
    "aiomqtt": serve_aiomqtt,
    "mqtt5": serve_mqtt5,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Echo responder on one candidate MQTT library, for the benchmark's layer comparison.",
    )
    responder.add_arguments(parser)
    parser.add_argument("--layer", choices=sorted(SERVE), required=True, help="which library answers")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    SERVE[args.layer](Setup.from_args(args, args.layer))
    return 0


# ---------------------------------------------------------------------------------------------
# The comparison (a step of `python -m mlserving_bench`)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonPlan:
    """How long and how hard step 9 loads each candidate."""

    #: Closed-loop runs per candidate, taken in turns (a, b, ..., a, b, ...) like steps 2-6.
    rounds: int = 3
    saturation_seconds: float = 4.0
    #: Requests outstanding in closed loop, as in steps 2-6: above the broker's window of 100 to
    #: each subscriber, so answers back up and each candidate's flow control is exercised.
    concurrency: int = 256
    #: The one open-loop rate every candidate answers for p50/p99: well under the slowest one's saturation.
    rate: float = 1000.0
    rate_seconds: float = 6.0
    warm_up_seconds: float = 1.0


FULL = ComparisonPlan()
#: CI smoke: every candidate starts and answers, briefly; nothing is judged on speed.
QUICK = ComparisonPlan(rounds=1, saturation_seconds=1.0, rate_seconds=1.0, warm_up_seconds=0.3)

#: load(label, tenant=..., concurrency=... | rate=..., duration=...) -> LoadResult: one load generator run.
Load = Callable[..., "LoadResult"]


def measure(
    load: Load, label: str, layer: str, child: procs.Child, broker_pid: int | None, **kwargs: Any
) -> dict[str, Any]:
    """One load run against one candidate: what came back, and the responder's (and broker's) CPU per answer."""
    pids = {"responder": child.pid, **({"broker": broker_pid} if broker_pid is not None else {})}
    meter = procs.CpuMeter(pids).start()
    result = load(label, tenant=tenant(layer), **kwargs)
    meter.stop()
    replied = result.counters.replied
    per = {name: round(1e6 * seconds / replied, 1) if replied else None for name, seconds in meter.seconds.items()}
    return {
        "throughput": round(result.throughput, 1),
        "answered": result.counters.answered,
        "lost": result.counters.lost,
        "errors": result.counters.error_total,
        "p50_ms": result.latency.p50_ms if result.latency.count else None,
        "p99_ms": result.latency.p99_ms if result.latency.count else None,
        "cpu_percent": meter.percent,
        "cpu_us_per_request": per.get("responder"),
        "broker_cpu_us_per_request": per.get("broker"),
    }


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def start(stack: Stack, name: str) -> procs.Child:
    """Candidate `name`'s echo, serving its tenant on `stack` (a `Stack` made with `extra_tenants=TENANTS`)."""
    extra = () if name in MODULES else ("--layer", name)
    return stack.start_responder(f"layer-{name}", MODULES.get(name, MODULE), tenant(name), *extra)


def compare(
    stack: Stack, plan: ComparisonPlan, load: Load, emit: Callable[[str], None], errors: dict[str, str]
) -> dict[str, Any]:
    """Start every candidate, load them in turns, stop them; a candidate that fails is reported, not fatal."""
    candidates: dict[str, dict[str, Any]] = {name: {"label": label} for name, label in LAYERS.items()}
    children: dict[str, procs.Child] = {}

    def failed(name: str, exc: Exception, child: procs.Child | None = None) -> None:
        tail = f"\n{child.log_tail(10)}" if child is not None else ""
        message = f"{type(exc).__name__}: {exc}{tail}"
        candidates[name]["error"] = message
        errors[f"layers:{name}"] = message
        emit(f"  {name} FAILED: {message}")
        if child is not None:
            children.pop(name, None)
            stack.stop(child)

    try:
        for name in LAYERS:
            try:
                child = children[name] = start(stack, name)
                candidates[name]["ready_seconds"] = round(child.ready_seconds or 0.0, 3)
                load(f"{name} warm-up", tenant=tenant(name), concurrency=64, duration=plan.warm_up_seconds, grace=5.0)
            except Exception as exc:  # noqa: BLE001 - one broken candidate must not cost the others
                failed(name, exc, children.get(name))
        for number in range(1, plan.rounds + 1):
            for name, child in list(children.items()):
                try:
                    entry = measure(
                        load,
                        f"{name} saturation, round {number}",
                        name,
                        child,
                        stack.broker_pid,
                        concurrency=plan.concurrency,
                        duration=plan.saturation_seconds,
                    )
                    child.check_alive()
                    candidates[name].setdefault("rounds", []).append(entry)
                except Exception as exc:  # noqa: BLE001
                    failed(name, exc, child)
        for name, child in list(children.items()):
            try:
                candidates[name]["at_rate"] = measure(
                    load,
                    f"{name} at {plan.rate:,.0f}/s",
                    name,
                    child,
                    stack.broker_pid,
                    rate=plan.rate,
                    duration=plan.rate_seconds,
                )
                candidates[name]["rss_mb"] = procs.rss_mb(child.pid)
                child.check_alive()
            except Exception as exc:  # noqa: BLE001
                failed(name, exc, child)
    finally:
        for child in children.values():
            stack.stop(child)
    for entry in candidates.values():
        rounds = entry.get("rounds") or []
        entry["saturation"] = max((r["throughput"] for r in rounds), default=None)
        entry["cpu_us_per_request"] = _median([r["cpu_us_per_request"] for r in rounds if r["cpu_us_per_request"]])
        entry["broker_cpu_us_per_request"] = _median(
            [r["broker_cpu_us_per_request"] for r in rounds if r["broker_cpu_us_per_request"]]
        )
    return {
        "plan": {
            "rounds": plan.rounds,
            "saturation_seconds": plan.saturation_seconds,
            "rate": plan.rate,
            "rate_seconds": plan.rate_seconds,
        },
        "candidates": candidates,
    }


if __name__ == "__main__":
    raise SystemExit(main())
